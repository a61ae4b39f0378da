"""SIGTERM stops a command as Ctrl-C does: ``sigterm_as_interrupt``.

Slurm's scancel and time limit, torchrun's agent and ``kill`` send SIGTERM. Within the
block it raises KeyboardInterrupt in the main thread, so every ``finally`` and ``with`` runs
(workers stopped, locks released, partial files removed) and the same command resumes.
A second SIGTERM is ignored so that it cannot cut that cleanup short.
"""

from __future__ import annotations

import contextlib
import signal
import threading


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere
    signal handlers cannot be set and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
