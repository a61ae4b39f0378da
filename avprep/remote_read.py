"""Reading shards that ``avprep shard --out URL`` wrote: listing them, opening them for
webdataset, counting their samples from the manifest, and the cheap tar check.

For readers (``cmac_core.data``, ``avprep inspect``) that take a shard spec:

- ``shard_urls(url)``: the committed ``*.tar`` of an output URL (a folder URL, or a
  glob such as ``s3://b/shards/shard-r0000-*.tar``), sorted, as URLs of the same
  protocol; hidden names (temporaries of renaming protocols) left out. ``shard_sizes``:
  the same with their sizes, from the one listing.
- ``gopen(url, mode)``: the shard as a seekable, retried file (``remote.RemoteFile``);
  ``register_webdataset()`` makes webdataset open every fsspec protocol that it has
  no handler of its own for (``s3://``, ``az://``...) with it, so
  ``wds.WebDataset(shard_urls(...))`` and ``tarfile_to_samples`` read them.
- ``shard_counts(urls)``, ``count_samples(urls)``: from the manifest parts beside the
  shards (one small read per part), each believed only up to what its shard's size can
  hold; None where a part is missing (then count otherwise, or give ``--steps``).
- ``check_shard(url)``: ``cmac_core.data.shards.check_shard``'s three-block test on a
  remote shard (first header, end-of-archive marker), in ranged reads.
- ``RangedFile(url)``: the shard as ``cmac_core.data.seek`` reads a local one (``pread``
  of byte ranges) through ranged GETs of at least ``AVPREP_REMOTE_SEEK_BLOCK_BYTES``
  (default 8 MiB: a shard of that size in one GET; the reader still decodes only what a
  clip uses).
"""

from __future__ import annotations

import fnmatch
import os
from collections import OrderedDict
from typing import Any

from avprep import manifest, remote, schema
from avprep.errors import UsageError
from avprep.schema import SampleError
from avprep.urls import remote_scheme

TAR_BLOCK = schema.TAR_BLOCK
# webdataset's own handlers (wds.gopen.gopen_schemes) are kept for these
WDS_OWN = {"pipe", "http", "https", "ais", "sftp", "ftps", "scp", "gs", "htgs", "hf"}


def is_fsspec_url(text: str) -> bool:
    """A URL fsspec opens (``s3://``, ``gs://``...), not ``pipe:`` or a local path."""
    return remote_scheme(text) is not None


def shard_urls(url: str) -> list[str]:
    """The committed shards under an output URL, or matching a glob URL, sorted;
    UsageError in one line if there are none or the store cannot be listed."""
    return list(shard_sizes(url))


def shard_sizes(url: str) -> dict[str, int | None]:
    """``shard_urls(url)`` with each shard's size in bytes (one listing; None where the
    store does not say), in the same order."""
    fs, path = remote.filesystem(url)
    shown = remote.scrub(url)
    glob = any(c in path for c in "*?[")
    folder, pattern = path.rsplit("/", 1) if glob else (path.rstrip("/"), "*")
    try:
        entries = remote.retry(lambda: fs.ls(folder, detail=True))
    except remote.RemoteFailure as e:
        if e.kind == remote.MISSING:
            raise UsageError(f"no {schema.SHARD_SUFFIX} shards in {shown}") from None
        raise UsageError(f"cannot list {shown}: {e.reason}") from None
    found = {}
    for entry in entries:
        base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if base.startswith(".") or not base.endswith(schema.SHARD_SUFFIX):
            continue
        if entry.get("type") != "directory" and fnmatch.fnmatchcase(base, pattern):
            found[fs.unstrip_protocol(f"{folder}/{base}")] = entry.get("size")
    if not found:
        raise UsageError(f"no {schema.SHARD_SUFFIX} shards in {shown}")
    return dict(sorted(found.items()))


def gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """webdataset's opener signature: ``url`` as a read-only seekable file."""
    if "r" not in mode:
        raise ValueError(f"{remote.scrub(url)}: shards are read only here")
    try:
        return remote.RemoteFile(url)
    except remote.RemoteFailure as e:
        raise OSError(f"{remote.scrub(url)}: {e.reason}") from None


def register_webdataset(schemes: tuple[str, ...] | None = None) -> None:
    """Make webdataset open fsspec URLs with ``gopen``: ``schemes``, default the installed
    fsspec protocols webdataset has no handler of its own for."""
    import importlib  # noqa: PLC0415

    import fsspec  # noqa: PLC0415

    # the module itself: ``webdataset.gopen`` is also the name of its function
    wg = importlib.import_module("webdataset.gopen")

    if schemes is None:
        known = fsspec.available_protocols()
        schemes = tuple(s for s in known if s not in WDS_OWN and s not in ("file", "local"))
    for s in schemes:
        wg.gopen_schemes.setdefault(s, gopen)


def count_samples(urls: list[str]) -> int | None:
    """Samples in the shards ``urls``, summed (``shard_counts``); None where that has none,
    or a manifest part is damaged."""
    try:
        counts = shard_counts(urls)
    except manifest.DamagedPart:
        return None
    return None if counts is None else sum(counts)


def shard_counts(urls: list[str]) -> list[int] | None:
    """Samples in each of the shards ``urls`` (all under one output URL or several), in
    order, from their manifest parts (fetched together), each believed only up to what its
    shard's size (one listing of each folder) can hold (``manifest.part_samples``);
    DamagedPart naming a part that is not one avprep wrote or counts more than that. None
    if a part is missing or a size unknown, or fsspec cannot open the protocol (webdataset
    may: ``gs://`` through gsutil)."""
    by_folder: dict[str, set[str]] = {}
    for u in urls:
        folder, _, name = u.rpartition("/")
        by_folder.setdefault(folder, set()).add(name)
    counts: dict[str, int] = {}
    for folder, names in by_folder.items():
        parts = {
            f"{folder}/{schema.MANIFEST_DIR}/{n.removesuffix(schema.SHARD_SUFFIX)}.parquet": n
            for n in names
        }
        try:
            fs, _ = remote.filesystem(folder)
            data = cat_each(fs, list(parts))
            sizes = {u.rsplit("/", 1)[-1]: n for u, n in shard_sizes(f"{folder}/").items()}
        except (remote.RemoteFailure, UsageError):  # or a protocol fsspec cannot open here
            return None
        for part_url, name in parts.items():
            if sizes.get(name) is None:
                return None
            table = manifest.read_part(part_url, data[part_url])
            counts[f"{folder}/{name}"] = manifest.part_samples(table, part_url,
                                                               shard_bytes=sizes[name])  # fmt: skip
    return [counts[u] for u in urls]


def cat_each(fs, urls: list[str]) -> dict[str, bytes]:
    """Each of ``urls``' bytes, fetched together (``fs.cat``); after a transient failure only
    those that failed are fetched again (``remote.retry``'s tries and backoff), so a store
    that fails a few requests of many is no worse for a longer list. RemoteFailure."""
    got: dict[str, bytes] = {}
    left = list(urls)

    def fetch() -> None:
        data = fs.cat(left, on_error="return")
        failed = []
        for u in left:
            value = data[u] if u in data else data.get(fs._strip_protocol(u))
            if isinstance(value, bytes):
                got[u] = value
            else:  # an exception, or an object the store did not answer for
                failed.append((u, value if isinstance(value, Exception) else FileNotFoundError(u)))
        left[:] = [u for u, _ in failed]
        if failed:  # a permanent failure (missing, denied) first: no more tries then
            failed.sort(key=lambda f: remote.classify(f[1]) == remote.TRANSIENT)
            raise failed[0][1]

    remote.retry(fetch)
    return got


def check_shard(url: str) -> str | None:
    """Why remote shard ``url`` cannot be a readable tar, or None (three blocks read)."""
    try:
        f = remote.RemoteFile(url, block_bytes=4 * TAR_BLOCK)
    except remote.RemoteFailure as e:
        return f"cannot be read ({e.reason})"
    try:
        size = f.size or 0
        if size == 0:
            return "an empty file (0 bytes)"
        head = f.read(TAR_BLOCK)
        f.seek(max(0, size - 2 * TAR_BLOCK))
        tail = f.read()
        if f.failure is not None:
            return f"cannot be read ({f.failure.reason})"
    finally:
        f.close()
    return schema.tar_ends_problem(size, head, tail)


# the least one GET of the seek reader fetches: a GET through s3fs costs as much client CPU
# as ~1.4 MB of its bytes, so fewer, larger GETs win (BENCHMARKS.md: 64 KiB, 1 MiB, 8 MiB)
SEEK_BLOCK_BYTES = 8 * 1024**2
KEEP_BLOCKS = 4  # blocks kept: a sample's headers are all read before its members


def seek_block_bytes() -> int:
    """``AVPREP_REMOTE_SEEK_BLOCK_BYTES``, else ``SEEK_BLOCK_BYTES``."""
    return max(1, int(os.environ.get("AVPREP_REMOTE_SEEK_BLOCK_BYTES") or SEEK_BLOCK_BYTES))


class ShardReadError(OSError):
    """A remote shard that could not be read on after the retries (the shard, not a sample)."""


class RangedFile:
    """A remote shard read by byte ranges, as ``cmac_core.data.ranges.CountingFile`` reads a
    local one: ``pread(n, offset)`` returns those bytes, fetched by one ranged GET (retried
    with ``remote.retry``'s backoff) unless a block fetched before holds them. A GET fetches
    at least ``block_bytes`` (``seek_block_bytes()``) from the offset asked for, kept for the
    reads that follow (a tar header, then the json after it, then the next header); a
    larger read is fetched exactly. ``read``, ``seek``, ``tell`` are tarfile's part.
    ``bytes_read``: bytes fetched; ``requests``: GETs made.

    Each GET costs a fixed amount of client CPU (through s3fs ~3.5 ms, as much as ~1.4 MB
    of its bytes: BENCHMARKS.md), so the block trades bytes fetched against requests made.

    ``pread`` raises SampleError where the shard ends first (as on disk) and ShardReadError
    once the store fails for good (missing, denied, tries spent)."""

    def __init__(self, url: str, size: int | None = None, *, block_bytes: int | None = None):
        self.url, self.shown = url, remote.scrub(url)
        self.fs, self.path = remote.filesystem(url)
        try:
            self.size = int(remote.stat(url)["size"] if size is None else size)
        except remote.RemoteFailure as e:
            raise ShardReadError(f"{self.shown}: {e.reason}") from None
        self.block_bytes = block_bytes or seek_block_bytes()
        self.pos = 0
        self.bytes_read = 0
        self.requests = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def _get(self, start: int, end: int) -> bytes:
        try:
            data = remote.retry(lambda: self.fs.cat_file(self.path, start=start, end=end))
        except remote.RemoteFailure as e:
            raise ShardReadError(f"{self.shown}: {e.reason}") from None
        self.requests += 1
        self.bytes_read += len(data)
        return data

    def _cached(self, offset: int, end: int) -> bytes | None:
        for start, block in self._blocks.items():
            if start <= offset and end <= start + len(block):
                return block[offset - start : end - start]
        return None

    def pread(self, n: int, offset: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``; SampleError when the shard ends first."""
        end = min(offset + max(n, 0), self.size)
        data = b"" if end <= offset else self._cached(offset, end)
        if data is None:
            if end - offset < self.block_bytes:
                block = self._get(offset, min(self.size, offset + self.block_bytes))
                self._blocks[offset] = block
                if len(self._blocks) > KEEP_BLOCKS:
                    self._blocks.popitem(last=False)
                data = block[: end - offset]
            else:
                data = self._get(offset, end)
        if len(data) != n:
            raise SampleError(f"a member runs past the end of the shard ({offset + n} bytes)")
        return data

    # the part of a file object tarfile uses (pax and GNU long-name headers)
    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = max(0, self.size - self.pos)
        n = min(n, max(0, self.size - self.pos))
        data = self.pread(n, self.pos) if n else b""
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._blocks.clear()
