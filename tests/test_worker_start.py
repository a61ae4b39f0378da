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


MAIN = """
import sys
from avprep.cli import main  # what the avprep console script runs

if __name__ == "__main__":
    sys.argv = ["avprep", "shard", sys.argv[1], "--out", sys.argv[2], "--workers", "2", "--quiet",
                "--shard-max-samples", "1"]
    main()
"""


def _imports(stderr: str, module: str) -> int:
    return sum(line.rsplit("|", 1)[-1].strip() == module for line in stderr.splitlines())


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="no forkserver")  # fmt: skip
def test_each_import_happens_once_where_it_is_needed(tmp_path):
    """-X importtime reaches the forkserver and the workers. The command line (typer) is
    imported by the command alone, though each worker runs the main script again; the
    decoding modules and pandas (pyarrow's, for the workers' manifest parts) by the server
    alone; the command itself never imports pandas (0.3 s of its start and end)."""
    from avprep.synth import make_demo_video

    (tmp_path / "in").mkdir()
    for i in range(2):
        make_demo_video(tmp_path / "in" / f"clip{i}.mp4", duration_s=1.0, size=(64, 48))
    script = tmp_path / "main.py"
    script.write_text(MAIN)
    proc = subprocess.run([sys.executable, "-X", "importtime", str(script), str(tmp_path / "in"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.tar"))) == 2  # both clips (2 workers started)
    assert _imports(proc.stderr, "typer") == 1
    assert _imports(proc.stderr, "avprep.sample") == 1
    assert _imports(proc.stderr, "pandas") == 1
