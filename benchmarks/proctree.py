"""An ``avprep shard`` process tree measured from /proc while it runs.

``walk`` lists the tree with each process's role (parent, worker, ffmpeg,
ffprobe, resource_tracker); two pollers sample it on a thread of their own:
``TreeRSS`` its memory, ``TreeCPU`` each thread's CPU seconds.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterator

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (none once it has exited)."""
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return kids


def role(pid: int, depth: int) -> str:
    """What a process of the tree is: parent (depth 0), worker, resource_tracker, or its
    program's name (ffmpeg, ffprobe). ValueError once it has exited (a zombie has no
    command line)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    if not cmd:
        raise ValueError("exited")
    if depth == 0:
        return "parent"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    if "forkserver" in cmd and depth == 1:
        return "forkserver"  # its children, the workers, show its command line too
    if "multiprocessing" in cmd:
        return "worker"
    return os.path.basename(cmd.split(" ", 1)[0]) or "other"  # ffmpeg, ffprobe


def walk(root: int, roles: dict[int, str]) -> Iterator[tuple[int, str]]:
    """(pid, role) of every process under ``root``, ``root`` included. ``roles`` caches
    each role from the first time it was read: a process that has exited but not been
    waited for keeps its role, one first seen after exiting is left out."""
    stack = [(root, 0)]
    while stack:
        pid, depth = stack.pop()
        stack += [(c, depth + 1) for c in children(pid)]
        if pid not in roles:
            try:
                roles[pid] = role(pid, depth)
            except (OSError, ValueError):
                continue  # it just exited
        yield pid, roles[pid]


def read_status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


class _Poller:
    """Calls ``_poll`` every ``interval_s`` on a thread until ``stop``."""

    def __init__(self, root: int, interval_s: float) -> None:
        self.root = root
        self.roles: dict[int, str] = {}
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class TreeRSS(_Poller):
    """Polls a process tree's memory.

    ``peak_by_role``: the largest VmHWM (the kernel's own peak RSS) seen for any
    process of each role (parent, worker, ffmpeg, ffprobe, resource_tracker);
    ``anon_by_role``: the largest RssAnon (private memory, not file pages such
    as shared libraries); ``peak_total``: the largest sum of VmRSS over the
    tree at one poll (shared library pages counted once per process). Bytes.
    """

    def __init__(self, root: int, interval_s: float = 0.1) -> None:
        self.peak_by_role: dict[str, int] = {}
        self.anon_by_role: dict[str, int] = {}
        self.peak_total = 0
        super().__init__(root, interval_s)

    def _poll(self) -> None:
        total = 0
        for pid, kind in walk(self.root, self.roles):
            try:
                st = read_status(pid)
            except OSError:
                continue  # it just exited
            if "VmHWM" not in st:
                continue  # a zombie: no memory left
            rss, hwm, anon = (int(st[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon"))
            total += rss
            self.peak_by_role[kind] = max(self.peak_by_role.get(kind, 0), hwm)
            self.anon_by_role[kind] = max(self.anon_by_role.get(kind, 0), anon)
        self.peak_total = max(self.peak_total, total)


class TreeCPU(_Poller):
    """Samples every thread's CPU seconds (user + system) in a process tree.

    ``by_part()``: seconds per "role: main thread" / "role: other threads" (a
    worker's other threads are decord's decoding threads). A thread that ends
    loses what it used since the last poll.
    """

    def __init__(self, root: int, interval_s: float = 0.01) -> None:
        self._last: dict[tuple[int, int], tuple[str, float]] = {}
        super().__init__(root, interval_s)

    def _poll(self) -> None:
        for pid, kind in walk(self.root, self.roles):
            try:
                for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        fields = f.read().rpartition(")")[2].split()
                    cpu = (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime
                    thread = "main thread" if tid == pid else "other threads"
                    self._last[(pid, tid)] = (f"{kind}: {thread}", cpu)
            except (OSError, ValueError, IndexError):
                continue  # ended between listing and reading

    def by_part(self) -> dict[str, float]:
        parts: dict[str, float] = defaultdict(float)
        for part, cpu in self._last.values():
            parts[part] += cpu
        return dict(parts)
