"""Which shards to read, how many samples they hold, and who reads which.

Shard specs: a directory written by ``avprep shard`` (its ``*.tar``), a glob, a
brace pattern (``shards/shard-{000..009}.tar``), or any URL webdataset's gopen
handles (``pipe:curl -s ...``, ``http://...``); several joined with ``::``. A URL of
an fsspec protocol (``s3://b/shards/``, ``s3://b/shards/shard-r0000-*.tar``) is listed
like a local folder or glob (``avprep.remote_read``), and webdataset opens ``s3://``
and the other fsspec protocols it has no handler of its own for through fsspec with
retries: registered when this module is imported, so in every loader worker too.
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import random
import tarfile
from pathlib import Path

from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from avprep import schema
from avprep.errors import UsageError
from cmac_core.errors import CmacError

try:  # fsspec (the remote extra): webdataset opens s3:// and the like through it
    import fsspec  # noqa: F401
except ImportError:
    remote_read = None
else:
    from avprep import remote_read

    remote_read.register_webdataset()  # at import: spawned loader workers import this too


class ShardSpecError(CmacError):
    pass


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("pipe:")


def _is_fsspec(text: str) -> bool:
    """A URL fsspec lists and opens (``s3://``, ``gs://``, ``https://``...), fsspec installed."""
    return remote_read is not None and remote_read.is_fsspec_url(text)


def _checked_remotely(url: str) -> bool:
    """A shard URL that webdataset opens through fsspec (``remote_read.gopen``): ranged
    reads work there, so it is checked before reading like a local shard."""
    return _is_fsspec(url) and url.split("://", 1)[0].lower() not in remote_read.WDS_OWN


def _lists(part: str) -> bool:
    """Whether fsspec URL ``part`` names a folder or a glob (listed), not one shard."""
    path = part.split("?", 1)[0] if part.lower().startswith("http") else part
    base = path.rstrip("/").rsplit("/", 1)[-1]
    if path.endswith("/") or any(c in path for c in "*?["):
        return True
    return ".tar" not in base and not base.endswith(".tgz")


def _remote_shards(part: str) -> list[str]:
    try:
        return remote_read.shard_urls(part)
    except UsageError as e:  # no shards there, a store that cannot be listed
        raise ShardSpecError(str(e)) from None


def resolve(spec: str | list[str]) -> list[str]:
    """The shard URLs of ``spec``, sorted where they come from a directory or glob; each once."""
    parts = spec if isinstance(spec, list) else str(spec).split("::")
    urls: list[str] = []
    for part in parts:
        if _is_fsspec(part) and "{" not in part and _lists(part):
            urls.extend(_remote_shards(part))
        elif _is_url(part):
            urls.extend(braceexpand(part))
        elif os.path.isfile(part):  # an existing file is itself, "[" or "{" in its name or not
            urls.append(part)
        elif os.path.isdir(part):
            found = sorted(str(p) for p in Path(part).glob(f"*{schema.SHARD_SUFFIX}"))
            if not found:
                raise ShardSpecError(f"no {schema.SHARD_SUFFIX} shards in {part}")
            urls.extend(found)
        elif any(c in part for c in "*?["):
            urls.extend(sorted(p for p in glob.glob(part) if os.path.isfile(p)))
        else:
            expanded = list(braceexpand(part))
            missing = [u for u in expanded if not os.path.exists(u)]
            if missing:
                raise ShardSpecError(f"shard not found: {missing[0]}")
            urls.extend(expanded)
    if not urls:
        raise ShardSpecError(f"no shards match {spec!r}")
    return list(dict.fromkeys(urls))  # a shard named twice is read once


def count_samples(urls: list[str]) -> int | None:
    """Samples in shards: local ones from the manifest beside them, else by reading tar
    headers; fsspec URLs from the manifest parts beside them (``remote_read``).

    None for other URLs (``pipe:``), or remote shards without their manifest parts (then
    give ``--steps``).
    """
    remote = [u for u in urls if _is_url(u)]
    if remote and not all(_is_fsspec(u) for u in remote):
        return None
    total = 0
    if remote:
        counted = remote_read.count_samples(remote)
        if counted is None:
            return None
        total += counted
    by_dir: dict[Path, set[str]] = {}
    for u in urls:
        if _is_url(u):
            continue
        by_dir.setdefault(Path(u).parent, set()).add(Path(u).name)
    for folder, names in by_dir.items():
        counted = _from_manifest(folder, names)
        if counted is None:
            counted = sum(_count_tar(folder / n) for n in names)
        total += counted
    return total


def _from_manifest(folder: Path, names: set[str]) -> int | None:
    """Samples of the shards ``names`` from their manifest parts; None where a part is
    missing or unreadable (the tars are counted instead)."""
    mdir = folder / schema.MANIFEST_DIR
    parts = [mdir / f"{Path(n).stem}.parquet" for n in names]
    if not all(p.exists() for p in parts):
        return None
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        return sum(
            int(pq.read_table(p, columns=["n_segments"]).column(0).to_numpy().sum()) for p in parts
        )
    except Exception:  # a damaged or foreign part: count the tars themselves
        return None


def _count_tar(path: Path) -> int:
    """Samples in a tar, counted from its headers up to any damage (which readers report)."""
    keys = set()
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                keys.add(m.name.split(".", 1)[0])
    except (tarfile.TarError, OSError):
        pass
    return len(keys)


TAR_BLOCK, COMPRESSED = schema.TAR_BLOCK, schema.COMPRESSED  # the shard format's (avprep.schema)


def check_shard(path: str) -> str | None:
    """Why local shard ``path`` cannot be a readable tar, or None. Reads three blocks,
    whatever the shard's size: its first header, and the end-of-archive marker (a tar cut
    short loses it). Damage inside is found, and reported, when it is read."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "an empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(TAR_BLOCK)
            f.seek(max(0, size - 2 * TAR_BLOCK))
            tail = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return schema.tar_ends_problem(size, head, tail)


def check_shards(urls: list[str]) -> tuple[list[str], dict[str, str]]:
    """``(readable, damaged)``: the shards that pass ``check_shard`` (local ones, and fsspec
    URLs webdataset opens through fsspec: ``remote_read.check_shard``, three ranged reads
    each, several shards at once; other URLs are kept: they are checked as they are
    read), and why each other one does not."""
    remote = [u for u in urls if _checked_remotely(u)]
    whys = {}
    if remote:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        with ThreadPoolExecutor(min(16, len(remote))) as pool:
            whys = dict(zip(remote, pool.map(remote_read.check_shard, remote), strict=True))
    good, bad = [], {}
    for url in urls:
        why = whys.get(url) if _is_url(url) else check_shard(url)
        if why is None:
            good.append(url)
        else:
            bad[url] = why
    return good, bad


class SharedEpoch:
    """The epoch number, visible to data-loader worker processes."""

    def __init__(self, epoch: int = 0) -> None:
        self.value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self.value.value = epoch

    def get(self) -> int:
        return self.value.value


# Which reader loader worker 0 plays (set in each worker by ``position.RotateReaders``): a
# resumed stream's first batch is due from the reader after the last one trained on.
_READER_OFFSET = [0]


def worker_coords() -> tuple[int, int]:
    """``(reader, readers)`` of this loader worker on its rank (``(0, 1)`` outside one)."""
    info = get_worker_info()
    if info is None:
        return (0, 1)
    return ((info.id + _READER_OFFSET[0]) % info.num_workers, info.num_workers)


class EpochShards(IterableDataset):
    """An endless stream of ``{"url": ...}`` for this rank and loader worker.

    The stream goes in cycles. In cycle c every reader (rank x loader worker)
    shuffles the full shard list with the same seed (seed, start epoch, c) and
    takes its own disjoint share, so each cycle partitions the shards afresh
    and no reader ever runs dry: every rank yields as many batches as the
    trainer asks for (``steps_per_epoch`` each epoch), and no rank waits for
    another at an epoch's end. With fewer shards than readers, each reader
    samples shards with replacement instead.
    """

    def __init__(
        self, urls: list[str], *, rank: int, world_size: int, epoch: SharedEpoch, seed: int = 0
    ) -> None:
        super().__init__()
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.epoch, self.seed = epoch, seed

    def __iter__(self):
        worker, n_workers = worker_coords()
        epoch = self.epoch.get()
        readers = self.world_size * n_workers
        reader = self.rank * n_workers + worker
        if len(self.urls) < readers:
            rng = random.Random(hash((self.seed, epoch, reader)))
            while True:
                yield {"url": rng.choice(self.urls)}
        cycle = 0
        while True:
            order = list(self.urls)
            random.Random(hash((self.seed, epoch, cycle))).shuffle(order)
            for url in order[reader::readers]:
                yield {"url": url}
            cycle += 1
