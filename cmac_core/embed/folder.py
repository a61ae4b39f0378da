"""Where an embedding run puts things: ``EMB_DIR`` holds the table's parts and nothing else.

Readers take ``EMB_DIR`` whole: polars' ``read_parquet(EMB_DIR)`` refuses any file there that
is not a part (hidden ones too, at any depth), ``datasets.load_dataset(EMB_DIR)`` and DuckDB's
``'EMB_DIR/**/*.parquet'`` read every Parquet file below it as rows. So what the run keeps
for itself lives beside the folder::

    EMB_DIR/part-{rank:05d}-{n:05d}.parquet   the segment table
    EMB_DIR.videos.parquet                    the per-video table (--per-video)
    .EMB_DIR.avprep/lock-{rank:05d}           a rank's lock; parts are written here first

A folder written by an older version (``EMB_DIR/.lock-*``, ``EMB_DIR/_per_video/``) is moved
to this layout when a run opens it. ``EMB_DIR`` may also be a URL (``s3://bucket/emb``): the
same layout in the store (``remote_table.RemoteTable``); ``place_of`` gives the one or the
other. Both are read and written by name through the same few methods (``parts``, ``read``,
``read_schema``, ``write``, ``delete``, ``write_per_video``), which ``table`` uses.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from avprep.outdir import try_lock
from avprep.urls import remote_scheme
from cmac_core.embed.table import EmbedError, os_why, write_atomically

_OLD_LOCK = re.compile(r"\.lock-(\d{5})$")  # up to 0.x: EMB_DIR/.lock-{rank:05d}
_OLD_TEMPORARY = re.compile(r"\.part-(\d{5})-\d{5}\.parquet\.tmp$")
OLD_PER_VIDEO = "_per_video"  # up to 0.x: EMB_DIR/_per_video/videos.parquet


def place_of(out_dir: str | Path):
    """The table at ``out_dir``: a ``TableFolder``, or a ``RemoteTable`` for a URL."""
    if not isinstance(out_dir, Path) and remote_scheme(str(out_dir)):
        from cmac_core.embed.remote_table import RemoteTable  # noqa: PLC0415  (fsspec)

        return RemoteTable(str(out_dir))
    return TableFolder.of(out_dir)


class TableFolder:
    """The paths of one embedding table: ``table`` is ``EMB_DIR`` as given; ``per_video``
    and ``state`` sit beside it (in its parent, named after it)."""

    def __init__(self, table: Path, per_video: Path, state: Path) -> None:
        self.table, self.per_video, self.state = table, per_video, state
        self.shown = str(table)
        self._lock: int | None = None
        self._tmp: Path | None = None  # where parts are written before their rename

    @classmethod
    def of(cls, out_dir: str | Path) -> TableFolder:
        table = Path(out_dir)
        real = table.resolve()  # two spellings of one folder share its locks
        if real.parent == real:
            raise EmbedError(f"{out_dir} has no parent folder to keep the run's locks in: "
                             "give a folder inside it")  # fmt: skip
        return cls(table, real.with_name(f"{real.name}.videos.parquet"),
                   real.with_name(f".{real.name}.avprep"))  # fmt: skip

    def lock_path(self, rank: int) -> Path:
        return self.state / f"lock-{rank:05d}"

    def open(self, rank: int, world_size: int) -> None:
        """Create both folders, lock ``rank`` (until ``close``), delete its unfinished parts,
        move an older version's files out of the table. Parts are written in ``state``
        before their rename into ``table`` (or in ``table`` itself, under hidden names,
        when ``table`` is another mount)."""
        try:
            self.table.mkdir(parents=True, exist_ok=True)
            self.state.mkdir(exist_ok=True)
            lock = try_lock(self.lock_path(rank))
        except OSError as e:
            raise EmbedError(f"cannot write to {self.table}: {os_why(e)}") from e
        if lock is None:
            raise EmbedError(f"rank {rank} is already embedding into {self.table}: wait for it")
        try:
            for folder in (self.state, self.table):
                for tmp in folder.glob(f".part-{rank:05d}-*.tmp"):
                    tmp.unlink(missing_ok=True)
            if rank == 0:
                (self.state / f".{self.per_video.name}.tmp").unlink(missing_ok=True)
            self._move_older_layout(rank, world_size)
            self._tmp = self._temporaries()
            self._lock = lock
        except OSError as e:
            os.close(lock)
            raise EmbedError(f"cannot write to {self.table}: {os_why(e)}") from e
        except EmbedError:
            os.close(lock)
            raise

    def close(self) -> None:
        """Release the rank's lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- the table's files, by name --------------------------------------------------------
    def parts(self, rank: int | None = None) -> list[str]:
        """The committed parts' names (of ``rank``, or all), sorted."""
        pattern = "part-*.parquet" if rank is None else f"part-{rank:05d}-*.parquet"
        return sorted(p.name for p in self.table.glob(pattern))

    def read_schema(self, name: str) -> pa.Schema:
        return pq.read_schema(self.table / name)

    def read(self, names: list[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of the parts ``names``, in that order."""
        paths = [str(self.table / n) for n in names]
        if len(paths) == 1:  # its schema's metadata kept (a rewrite keeps it)
            return pq.read_table(paths[0], columns=columns)
        return ds.dataset(paths, format="parquet").to_table(columns=columns)

    def write(self, table: pa.Table, name: str) -> None:
        """``table`` as the part ``name``, whole or not at all (open first)."""
        write_atomically(table, self.table / name, self._tmp or self.state)

    def delete(self, name: str) -> None:
        (self.table / name).unlink(missing_ok=True)

    def write_per_video(self, table: pa.Table) -> Path:
        write_atomically(table, self.per_video, self.state)
        return self.per_video

    def _temporaries(self) -> Path:
        """``state`` if a file renamed from it lands in ``table`` (one mount), else ``table``.
        Also checks that ``table`` can be written."""
        probe = self.state / f"probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        try:
            os.replace(probe, self.table / f".{probe.name}")
        except OSError as e:
            probe.unlink(missing_ok=True)
            if e.errno != errno.EXDEV:
                raise
            (self.table / f".{probe.name}").write_bytes(b"")
            (self.table / f".{probe.name}").unlink()
            return self.table
        (self.table / f".{probe.name}").unlink()
        return self.state

    def _move_older_layout(self, rank: int, world_size: int) -> None:
        """An older version's locks and temporaries of rank n go (n mod world_size takes
        them, so ranks never contend); rank 0 moves its per-video table beside the folder.
        EmbedError if an older version still holds one of those locks."""
        for path in self.table.iterdir():
            old = _OLD_LOCK.match(path.name) or _OLD_TEMPORARY.match(path.name)
            if old is None or int(old.group(1)) % world_size != rank:
                continue
            if path.name.startswith(".lock-"):
                fd = try_lock(path)
                if fd is None:
                    raise EmbedError(f"an older avprep is embedding into {self.table} "
                                     f"(it holds {path.name}): wait for it")  # fmt: skip
                path.unlink()
                os.close(fd)
            else:
                path.unlink(missing_ok=True)
        old_videos = self.table / OLD_PER_VIDEO
        if rank == 0 and old_videos.is_dir():
            table = old_videos / "videos.parquet"
            if table.exists() and not self.per_video.exists():
                shutil.move(table, self.per_video)
            for tmp in old_videos.glob(".*.tmp"):
                tmp.unlink()
            table.unlink(missing_ok=True)  # an older copy beside a newer one
            try:
                old_videos.rmdir()
            except OSError as e:
                raise EmbedError(f"{old_videos} holds files avprep did not write; readers of "
                                 f"{self.table} would read them too: move them away") from e  # fmt: skip
