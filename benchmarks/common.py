"""What every benchmark records about where it ran: the CPU and the commit measured."""

from __future__ import annotations

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
