"""What every benchmark records about where it ran: the CPU and the commit measured."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what ``platform`` says elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "?"


def commit(*paths: str) -> str:
    """The short HEAD commit, with ``+changes`` if ``paths`` differ from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if paths:
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=REPO)
        head += "+changes" if changed.returncode else ""
    return head


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, from /proc (none once it has exited)."""
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return kids


def role(pid: int, depth: int) -> str:
    """What a process of an ``avprep shard`` tree is: parent (depth 0), worker,
    resource_tracker, or its program's name (ffmpeg, ffprobe). ValueError once it has
    exited (a zombie has no command line)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    if not cmd:
        raise ValueError("exited")
    if depth == 0:
        return "parent"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    if "multiprocessing" in cmd:
        return "worker"
    return os.path.basename(cmd.split(" ", 1)[0]) or "other"  # ffmpeg, ffprobe
