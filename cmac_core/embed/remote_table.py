"""An embedding table at a URL (``embed(..., out_dir="s3://bucket/emb")``): the layout of
``folder`` in an object store, written through ``avprep shard``'s remote output
(``avprep.remote_store.RemoteStore``: its staging folder, uploads, lease and clean-up)::

    URL/part-{rank:05d}-{n:05d}.parquet   the segment table
    URL.videos.parquet                    the per-video table (per_video)
    .URL.avprep/lock-{rank:05d}           a rank's lease (an object renewed by a thread)

Commit: a part is written to the rank's local staging folder, then uploaded under its final
name in one request (a PUT, or a multipart upload for a large part, visible only once
complete), so a reader listing ``URL/*.parquet`` sees committed parts only, and a run
killed at any point resumes from them: every key once. A part rewritten by
``table.keep_first_rows`` is replaced in one upload as well. A rerun of a rank takes over
the lease of a killed run on the same host at once (``RemoteStore.lock``), aborts that
run's unfinished multipart uploads and empties its staging folder.

Parts are read in ranged reads (``avprep.remote.RemoteFile``, retried): a resume reads the
key column and the footer, not whole parts. Credentials come from the environment and the
store's own configuration, as for ``avprep shard``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from avprep import remote
from avprep.errors import UsageError
from avprep.remote_store import LeaseHeld, RemoteStore
from cmac_core.checkpoint import first_line
from cmac_core.embed.table import EmbedError

READ_BLOCK_BYTES = 1 << 20  # one ranged read of a part (its footer, a column chunk)


@contextlib.contextmanager
def _one_line():
    """The store's errors (StoreError, a missing package) as EmbedError."""
    try:
        yield
    except UsageError as e:
        raise EmbedError(str(e)) from None


class RemoteTable:
    """The table at ``url`` (a folder URL of a writable fsspec store), read and written by
    part name as ``folder.TableFolder`` is."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.shown = remote.scrub(self.url)
        parent, _, name = self.url.rpartition("/")
        if not name or parent.endswith(":/") or "://" not in parent:
            raise EmbedError(f"{self.shown} has no parent prefix to keep the run's leases in: "
                             "give a prefix inside it (s3://bucket/emb)")  # fmt: skip
        self.parent, self.per_video_name = parent, f"{name}.videos.parquet"
        self.per_video = f"{self.shown.rpartition('/')[0]}/{self.per_video_name}"
        self.state_url = f"{parent}/.{name}.avprep"
        with _one_line():
            self.store = RemoteStore(self.url)  # rank 0's names until ``open``
        self._release: Callable[[], None] | None = None

    def open(self, rank: int, world_size: int) -> None:
        """Hold ``rank``'s lease (until ``close``), then drop what a killed run of the rank
        left: its staging folder and unfinished uploads. EmbedError if another run of the
        rank holds the lease, or the store cannot be written."""
        with _one_line():
            self.store = RemoteStore(self.url, rank)
            self.store.prepare()  # a missing bucket, no write access: one line
            state = RemoteStore(self.state_url, rank)
            try:
                self._release = state.lock(f"lock-{rank:05d}")
            except LeaseHeld as e:
                raise EmbedError(
                    f"rank {rank} is already embedding into {self.shown} ({e.holder}, lease "
                    f"renewed {e.age_s:.0f} s ago): wait for it, or for its lease to lapse "
                    f"({e.lease_s:.0f} s)"
                ) from None
            self.store.clean_temporaries(start=f"part-{rank:05d}-")

    def close(self) -> None:
        """Remove the staging folder and release the lease (a run refused the lease leaves
        the staging folder of the run that holds it alone)."""
        if self._release is not None:
            self.store.close()
            self._release()
            self._release = None

    # -- the table's objects, by name -----------------------------------------------------
    def parts(self, rank: int | None = None) -> list[str]:
        pattern = "part-*.parquet" if rank is None else f"part-{rank:05d}-*.parquet"
        with _one_line():
            return self.store.list(pattern)

    def read_schema(self, name: str) -> pa.Schema:
        return self._read(name, pq.read_schema)

    def read(self, names: list[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of the parts ``names``, in that order (each part's own schema metadata
        kept where there is one)."""
        tables = [self._read(n, lambda f: pq.read_table(f, columns=columns)) for n in names]
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(t.replace_schema_metadata(None) for t in tables)

    def write(self, table: pa.Table, name: str) -> None:
        """``table`` as the part ``name``: written in the staging folder, then uploaded whole."""
        self._publish(table, name, self.store)

    def delete(self, name: str) -> None:
        with _one_line():
            self.store.delete(name)

    def write_per_video(self, table: pa.Table) -> str:
        with _one_line():
            beside = RemoteStore(self.parent, self.store.rank)
        self._publish(table, self.per_video_name, beside)
        return self.per_video

    # -- the two ways through -------------------------------------------------------------
    def _publish(self, table: pa.Table, name: str, store: RemoteStore) -> None:
        staging = self.store.staging
        tmp = staging / f".{name}.{os.getpid()}.tmp"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp, compression="zstd")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise EmbedError(f"cannot write to the staging folder {staging}: "
                             f"{e.strerror or first_line(str(e))}") from e  # fmt: skip
        try:
            with _one_line():
                store.publish(tmp, name)
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self, name: str, how):
        where = f"{self.shown}/{name}"
        try:
            f = remote.RemoteFile(remote.join(self.url, name), block_bytes=READ_BLOCK_BYTES)
        except remote.RemoteFailure as e:
            raise EmbedError(f"cannot read {where}: {e.reason}") from None
        try:
            return how(f)
        except (pa.ArrowException, OSError, ValueError) as e:
            if f.failure is not None:
                raise EmbedError(f"cannot read {where}: {f.failure.reason}") from None
            raise EmbedError(f"{where} is not a readable Parquet part: "
                             f"{first_line(str(e))}") from None  # fmt: skip
        finally:
            f.close()
