"""How shard workers start: forked from a forkserver that imported ``avprep.worker`` once.

A spawned worker is a new interpreter that imports numpy, PyAV, pyarrow and pandas again
(~0.55 s of CPU each); a forkserver's child has them already. ``start_early`` starts the
server before the command's own imports, so the two import side by side.

What the server imports is everything a worker runs (``PRELOAD``): ``avprep.worker``
imports the decoding modules only when it starts working, and pyarrow imports pandas at
the first table built from Python objects (a worker's first manifest part). A worker
also runs its parent's main script again (multiprocessing's rule); for the console script
that is ``avprep.cli``, which imports nothing heavy for it.
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


# What a worker imports: the loop, then (lazily, in avprep.worker) decoding and writing,
# and (pyarrow, at the first manifest part) pandas.
PRELOAD = ("avprep.worker", "avprep.sample", "avprep.writer", "pandas")


def worker_context() -> mp.context.BaseContext:
    """Where the platform has it, a forkserver that preloads ``PRELOAD``; else (Windows)
    spawn. Either way a worker starts from a clean process, not a fork of this one; it
    takes this process's working folder and environment from its arguments (the server
    keeps those of when it started) and dies with this process (``tools.die_with``)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start_early() -> None:
    """Start the forkserver now (it returns at once; the server imports in the background)."""
    single_threaded()
    ctx = worker_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver  # noqa: PLC0415

        forkserver.ensure_running()
