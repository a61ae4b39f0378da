"""Shard sink: tar written under a temporary name, renamed when complete.

A reader globbing ``*.tar`` never sees half a shard. A video's samples always
land in one shard (shards are cut between videos, so a shard may exceed
``max_bytes`` by at most one video), and a video that fails half way is rolled
back by truncating the temporary tar to where that video began.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from avprep import schema

BLOCK = 512
_MTIME = 1_700_000_000  # fixed: the same inputs give byte-identical members


def tar_member(name: str, data: bytes) -> bytes:
    """One tar member (PAX header + data + padding)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MTIME
    info.mode = 0o644
    header = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")
    return header + data + b"\0" * (-len(data) % BLOCK)


def fsync_rename(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class ShardWriter:
    """Writes samples into ``{out_dir}/{stem}.tar`` files, one at a time.

    ``stem_for(seq)`` names shard number ``seq``; ``on_commit(path, rows)`` is
    called after each rename with the manifest rows of the videos it holds.
    ``publish(tmp, name)`` puts a complete temporary shard in place (default: renamed
    to ``out_dir/name``; a remote store uploads it under its final name).
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        stem_for: Callable[[int], str],
        max_samples: int,
        max_bytes: int,
        on_commit: Callable[[Path, list[dict]], None],
        publish: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.publish = publish or (lambda tmp, name: fsync_rename(tmp, self.out_dir / name))
        self.stem_for = stem_for
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.on_commit = on_commit
        self.seq = 0
        self._file: io.BufferedWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._samples = 0
        self._rows: list[dict] = []
        self._video_offset = 0
        self._video_samples = 0

    # -- per video -----------------------------------------------------------
    def begin_video(self) -> str:
        """Start a video; returns the shard name its samples will go to."""
        if self._file is not None and (
            self._samples >= self.max_samples or self._file.tell() >= self.max_bytes
        ):
            self.commit()
        if self._file is None:
            stem = self.stem_for(self.seq)
            self.seq += 1
            self._final = self.out_dir / f"{stem}{schema.SHARD_SUFFIX}"
            self._tmp = self._final.with_name(self._final.name + schema.TMP_SUFFIX)
            self._file = open(self._tmp, "wb")  # noqa: SIM115  (closed in commit/abort)
            self._samples = 0
        self._video_offset = self._file.tell()
        self._video_samples = 0
        return self._final.name

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: ``members`` maps suffix (``json``, ``f000.jpg``) to bytes."""
        for suffix, data in members.items():
            self._file.write(tar_member(f"{key}.{suffix}", data))
        self._samples += 1
        self._video_samples += 1

    def end_video(self, row: dict) -> None:
        self._rows.append(row)

    def rollback_video(self) -> None:
        """Forget the current video's samples (it failed part way)."""
        if self._file is None:
            return
        self._file.seek(self._video_offset)
        self._file.truncate()
        self._samples -= self._video_samples
        self._video_samples = 0

    # -- per shard -----------------------------------------------------------
    @property
    def pending_rows(self) -> list[dict]:
        return list(self._rows)

    def commit(self) -> None:
        """Close the current shard, rename it into place, report its rows."""
        if self._file is None:
            return
        if self._samples == 0:
            self.abort()
            return
        self._file.write(b"\0" * (2 * BLOCK))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.publish(self._tmp, self._final.name)
        rows, final = self._rows, self._final
        self._file, self._tmp, self._rows = None, None, []
        self.on_commit(final, rows)

    def abort(self) -> None:
        """Drop the temporary shard (its videos will be redone by a later run)."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
        self._file, self._tmp, self._rows = None, None, []
