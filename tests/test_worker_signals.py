"""Loader workers leave stopping to their parent (cmac_core/data/worker_signals.py): a SIGTERM
from outside (Slurm's scancel reaches every process of the job) leaves a worker reading, so the
parent alone decides how the run stops; the parent's own SIGTERM still ends it."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Run in a process of its own: torch's SIGCHLD handler belongs to whoever iterates the loader.
SCRIPT = """
import os, subprocess, sys, time
import torch
from cmac_core.data.worker_signals import StoppedByParent

class Pids(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            time.sleep(0.01)
            yield os.getpid()

def state(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"

init = StoppedByParent() if sys.argv[1] == "with" else None
it = iter(torch.utils.data.DataLoader(Pids(), batch_size=None, num_workers=1, worker_init_fn=init))
pid = int(next(it))
subprocess.run(["kill", "-TERM", str(pid)], check=True)  # from outside: not the parent
time.sleep(0.5)
print("after outside kill:", [int(next(it)) == pid for _ in range(3)], state(pid) not in ("Z", "gone"),
      flush=True)
os.kill(pid, 15)  # from the parent
deadline = time.time() + 10
while state(pid) not in ("Z", "gone") and time.time() < deadline:
    time.sleep(0.05)
print("after parent kill:", state(pid) in ("Z", "gone"), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_loader_worker_outlives_an_outside_sigterm_and_ends_on_its_parents():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "with"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["after outside kill: [True, True, True] True",
                                        "after parent kill: True"], proc.stdout  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_without_it_an_outside_sigterm_kills_the_worker_and_the_parent_raises():
    """What the init is for: torch alone lets the outside SIGTERM kill the worker."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "without"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert "killed by signal: Terminated" in proc.stderr, proc.stderr[-2000:]
