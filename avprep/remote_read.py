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
- ``count_samples(urls)``: from the manifest parts beside the shards (one small read
  per part), None where a part is missing (then count otherwise, or give ``--steps``).
- ``check_shard(url)``: ``cmac_core.data.shards.check_shard``'s three-block test on a
  remote shard (first header, end-of-archive marker), in ranged reads.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from avprep import manifest, remote, schema
from avprep.errors import UsageError
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
    """Samples in the shards ``urls`` (all under one output URL or several), summed from
    their manifest parts; None if any part is missing or unreadable, or fsspec cannot
    open the protocol (webdataset may: ``gs://`` through gsutil)."""
    by_folder: dict[str, set[str]] = {}
    for u in urls:
        folder, _, name = u.rpartition("/")
        by_folder.setdefault(folder, set()).add(name)
    total = 0
    for folder, names in by_folder.items():
        parts = {
            f"{folder}/{schema.MANIFEST_DIR}/{n.removesuffix(schema.SHARD_SUFFIX)}.parquet": n
            for n in names
        }
        try:
            fs, _ = remote.filesystem(folder)
            data = cat_each(fs, list(parts))
        except (remote.RemoteFailure, UsageError):  # or a protocol fsspec cannot open here
            return None
        for part_url in parts:
            try:
                table = manifest.read_part(part_url, data[part_url])
            except manifest.DamagedPart:
                return None
            total += sum(n or 0 for n in table.column("n_segments").to_pylist())
    return total


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
