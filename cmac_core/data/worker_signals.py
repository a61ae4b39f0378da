"""Loader workers leave stopping to their parent: ``StoppedByParent``, a ``worker_init_fn``.

Slurm's scancel, its time limit and a kill of a job's process group send SIGTERM to every
process of the job at once. torch's loader workers die of a SIGTERM from anyone but their
parent, and the parent's SIGCHLD handler then raises "DataLoader worker ... is killed by
signal: Terminated", sometimes before the parent's own SIGTERM handler has turned the same
signal into a clean, resumable stop: a traceback instead of "run the same command again".

So a worker ignores a SIGTERM that does not come from its parent; the parent stops its
workers as it stops (torch's shutdown: the workers' done event, then ``terminate()``). A
SIGTERM from the parent ends the worker at once, as torch's own handler does. A worker whose
parent dies without stopping it ends on torch's watchdog, as before.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable


class StoppedByParent:
    """``worker_init_fn``: only the parent's SIGTERM ends this worker; then ``then(worker_id)``
    (another init, e.g. ``RotateReaders``), if given."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        leave_sigterm_to_parent()
        if self.then is not None:
            self.then(worker_id)

    def __repr__(self) -> str:
        return f"StoppedByParent({self.then!r})"


def leave_sigterm_to_parent() -> None:
    """In this process (a loader worker, single-threaded when called): SIGTERM is blocked in
    this thread and every thread it starts later, and one thread takes each SIGTERM with its
    sender (``sigwaitinfo``): the parent's ends the process, anyone else's is ignored."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)  # as torch's handler does on its parent's SIGTERM

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()
