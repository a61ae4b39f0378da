"""The external programs avprep runs: ffmpeg and ffprobe."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
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


def require_ffmpeg() -> None:
    """Raise a one-line UsageError unless both ffmpeg and ffprobe are installed."""
    ffmpeg_bin()
    ffprobe_bin()


@functools.cache
def filter_options(name: str) -> frozenset[str]:
    """The options ffmpeg's filter ``name`` takes here (from ``ffmpeg -h filter=NAME``):
    newer options are used only where the installed ffmpeg has them."""
    out = subprocess.run(
        [ffmpeg_bin(), "-hide_banner", "-h", f"filter={name}"], capture_output=True, text=True
    ).stdout
    return frozenset(m.group(1) for m in re.finditer(r"^\s+(\w+)\s+<", out, re.MULTILINE))


def local_url(path: str) -> str:
    """``path`` as ffmpeg's file protocol, so a name with a colon (``a:b.mp4``) is never
    read as a protocol."""
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
