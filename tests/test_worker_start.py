"""How shard workers start (avprep/worker_start.py): the forkserver they fork from is
started with one BLAS/OpenMP thread, as its numpy sizes its thread pool at import, and
imports once what every worker would import."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, time
from multiprocessing import forkserver
from avprep.worker_start import start_early
os.environ.pop("OPENBLAS_NUM_THREADS", None)
start_early()
pid = forkserver._forkserver._forkserver_pid
time.sleep(0.5)
env = open(f"/proc/{pid}/environ", "rb").read().split(b"\\0")
print(sorted(e.decode() for e in env if e.startswith((b"OPENBLAS", b"OMP_"))))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_forkserver_starts_single_threaded():
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "3"}  # a user's own setting stays
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['OMP_NUM_THREADS=3', 'OPENBLAS_NUM_THREADS=1']"


IMPORTS = """
import typer  # stands for the command line the main script imports
from avprep.worker_start import start_early, worker_context

if __name__ == "__main__":
    start_early()
    ctx = worker_context()
    workers = [ctx.Process(target=print, args=("worker",)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
"""


def _imports(stderr: str, module: str) -> int:
    return sum(line.rsplit("|", 1)[-1].strip() == module for line in stderr.splitlines())


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="no forkserver")  # fmt: skip
def test_workers_import_nothing_the_server_imported(tmp_path):
    """-X importtime reaches the server and its children: typer is imported by the main
    process and the server only (not again by each worker for the main script), and the
    decoding modules by the server only."""
    script = tmp_path / "main.py"
    script.write_text(IMPORTS)
    proc = subprocess.run([sys.executable, "-X", "importtime", str(script)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.count("worker") == 2, proc.stderr[-2000:]
    assert _imports(proc.stderr, "typer") == 2, proc.stderr[-2000:]
    assert _imports(proc.stderr, "avprep.sample") == 1
    assert _imports(proc.stderr, "avprep.writer") == 1
