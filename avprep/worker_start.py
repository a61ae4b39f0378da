"""How shard workers start: forked from a forkserver that imported ``avprep.worker`` once.

A spawned worker is a new interpreter that imports numpy, PyAV, pyarrow and pandas again
(~0.55 s of CPU each); a forkserver's child has them already. ``start_early`` starts the
server before the command's own imports, so the two import side by side.

What the server imports is everything a worker runs (``PRELOAD``: ``avprep.worker`` imports
the decoding modules only when it starts working), and, when the command line starts it,
the command line's modules too: multiprocessing has every child run its parent's main
script again (for avprep's entry script: ``from avprep.cli import main``, that is typer,
rich and the whole CLI, ~180 modules), which then finds them imported. (Preloading
``"__main__"`` is multiprocessing's own way, but it did nothing until CPython gh-126631,
fixed in 3.14 and late 3.13 releases.)
"""

from __future__ import annotations

import multiprocessing as mp
import os

# Workers are the parallelism: a threaded BLAS inside each only thrashes.
_SINGLE_THREADED = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded() -> None:
    """One BLAS/OpenMP thread in the workers (unless the user set a number): set before the
    forkserver starts, whose numpy (imported once) sizes its thread pool from them."""
    for var in _SINGLE_THREADED:
        os.environ.setdefault(var, "1")


# What a worker imports: the loop, then (lazily, in avprep.worker) decoding and writing.
PRELOAD = ("avprep.worker", "avprep.sample", "avprep.writer")


def worker_context(*, also: tuple[str, ...] = ()) -> mp.context.BaseContext:
    """Where the platform has it, a forkserver that preloads ``PRELOAD`` and ``also``; else
    (Windows) spawn. Either way a worker starts from a clean process, not a fork of this
    one; it takes this process's working folder and environment from its arguments (the
    server keeps those of when it started) and dies with this process (``tools.die_with``).
    The first server started keeps its list."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, *also])
    return ctx


def start_early() -> None:
    """Start the forkserver now (it returns at once; the server imports in the background).
    For avprep's command line, whose modules every worker imports for its main script."""
    single_threaded()
    ctx = worker_context(also=("avprep.cli",))
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver  # noqa: PLC0415

        forkserver.ensure_running()
