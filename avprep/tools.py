"""The external programs avprep runs: ffmpeg and ffprobe, and the one place that starts them."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from avprep.errors import UsageError

INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install ffmpeg; macOS: brew install ffmpeg)"


@functools.cache
def _find(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UsageError(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


def ffmpeg_bin() -> str:
    return _find("ffmpeg")


def ffprobe_bin() -> str:
    return _find("ffprobe")


def has_ffmpeg() -> bool:
    """Whether both ffmpeg and ffprobe are on PATH (the fallback decoder needs them)."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def require_ffmpeg() -> None:
    """Raise a one-line UsageError unless both ffmpeg and ffprobe are installed."""
    ffmpeg_bin()
    ffprobe_bin()


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # resolved here, never after a fork
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL the calling process when the thread that started it exits
    (its parent's death by kill -9 included). Nothing elsewhere."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL)


def die_with(pid: int) -> None:
    """SIGKILL the calling process's group as soon as process ``pid`` exits.

    For a worker forked by a forkserver: its parent is the server, which outlives a
    killed command, so ``die_with_parent`` does not reach it. A daemon thread waits on a
    pidfd (Linux; else it polls ``pid`` every 0.2 s) and kills the group, the worker
    and its ffmpeg/ffprobe, even while the main thread is blocked in a system call no
    signal handler interrupts (opening a FIFO nobody writes). Call after ``setpgid``."""

    def kill_group() -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        kill_group()  # gone already
    except (AttributeError, OSError):  # no pidfd here (macOS, an old kernel): poll
        threading.Thread(target=_poll_then, args=(pid, kill_group), daemon=True,
                         name="avprep-lifeline").start()  # fmt: skip
    else:
        threading.Thread(target=_wait_then, args=(fd, kill_group), daemon=True,
                         name="avprep-lifeline").start()  # fmt: skip


def _wait_then(fd: int, then) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not poller.poll():
        pass
    then()


def _poll_then(pid: int, then) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            then()
            return
        except PermissionError:
            pass  # alive, another user's: not ours to judge
        time.sleep(0.2)


class _ChildSetup:
    """``preexec_fn`` of every ffmpeg/ffprobe: die with the parent. It runs between fork
    and exec in a process with threads (decord's), so it only calls prctl (resolved
    beforehand) and getppid: if the parent died before prctl, exit at once."""

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __call__(self) -> None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL)
        if os.getppid() != self.parent:
            os._exit(1)


def _child_options() -> dict:
    return {"preexec_fn": _ChildSetup()} if _PRCTL is not None else {}


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start ffmpeg or ffprobe (``cmd``, no shell). The one place avprep starts them: the
    child is SIGKILLed when its parent dies, so one blocked on its input (a FIFO, a
    stalled mount), which ignores SIGTERM, never outlives a killed worker.

    Call it from the thread that owns the child: Linux signals the child when that
    thread exits. preexec_fn makes Python fork instead of vfork: about 6 ms more per
    child in a 170 MB worker."""
    return subprocess.Popen(cmd, **_child_options(), **kwargs)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` through ``popen``'s rule (the child dies with its parent)."""
    return subprocess.run(cmd, **_child_options(), **kwargs)


@functools.cache
def filter_options(name: str) -> frozenset[str]:
    """The options ffmpeg's filter ``name`` takes here (from ``ffmpeg -h filter=NAME``):
    newer options are used only where the installed ffmpeg has them."""
    out = run(
        [ffmpeg_bin(), "-hide_banner", "-h", f"filter={name}"], capture_output=True, text=True
    ).stdout
    return frozenset(m.group(1) for m in re.finditer(r"^\s+(\w+)\s+<", out, re.MULTILINE))


def local_url(path: str) -> str:
    """``path`` as ffmpeg's file protocol: what every decoder opens (ffprobe, the ffmpeg
    pipes, decord, an in-process libav decoder), never the bare path.

    libavformat reads a name such as ``concat:a.mp4|b.mp4`` or ``subfile:...`` (a
    relative path with a colon) as a protocol and opens other files under its name;
    after ``file:`` the rest is a local path whatever it holds.
    """
    return "file:" + path


_CONTEXT = re.compile(
    r"^(\[[^\]]* @ 0x[0-9a-fA-F]+\] )?(\[(?:panic|fatal|error|warning|info|verbose|debug)\] )?"
)


def clean_message(line: str, path: str | None = None) -> str:
    """One stderr line as a manifest reason: no ``[demuxer @ 0x55..]`` or ``[error]`` tag,
    no leading ``{path}: `` (so one cause reads the same for every file), at most 300 chars."""
    line = _CONTEXT.sub("", line.strip())
    if path:
        line = line.encode("utf-8", "replace").decode()
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        for name in (local_url(shown), shown):
            if line.startswith(f"{name}: "):
                line = line[len(name) + 2 :]
                break
    return line[:300]


class StderrDrain:
    """Reads a process's stderr on a thread so the process never blocks on it.

    Keeps the last ``keep`` lines for error messages and hands every line to
    ``on_line`` (used to read showinfo's frame timestamps).
    """

    def __init__(
        self, proc: subprocess.Popen, *, keep: int = 20, on_line=None, path: str | None = None
    ) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.path = path
        self._on_line = on_line
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if self._on_line is not None and self._on_line(line):
                continue
            if line:
                self.lines.append(line)
        if self._on_line is not None:
            self._on_line(None)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def last(self) -> str:
        return clean_message(self.lines[-1], self.path) if self.lines else ""
