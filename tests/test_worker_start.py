"""How shard workers start (avprep/worker_start.py): the forkserver they fork from is
started with one BLAS/OpenMP thread, as its numpy sizes its thread pool at import."""

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
