"""Which shards to read, how many samples they hold, and who reads which (``StreamPlan``).

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
import logging
import multiprocessing as mp
import os
import random
import tarfile
from pathlib import Path

import numpy as np
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

log = logging.getLogger(__name__)


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
    """Samples in shards (``shard_counts``, summed); None where a shard's count is unknown."""
    counts = shard_counts(urls)
    return None if counts is None else sum(counts)


def shard_counts(urls: list[str]) -> list[int] | None:
    """Samples in each shard of ``urls``, in order: local ones from the manifest parts
    beside them, else (no part, or a damaged one: a warning names it) by reading tar
    headers; fsspec URLs from the manifest parts beside them (``remote_read.shard_counts``,
    all at once). A part's count is believed only up to what its shard's bytes can hold
    (``manifest.part_samples``).

    None for other URLs (``pipe:``), or remote shards without believable manifest parts
    (then give ``--steps``).
    """
    remote = [u for u in urls if _is_url(u)]
    if remote and not all(_is_fsspec(u) for u in remote):
        return None
    counts: dict[str, int | None] = {}
    if remote:
        from avprep.manifest import DamagedPart  # noqa: PLC0415

        try:
            found = remote_read.shard_counts(remote)
        except DamagedPart as e:
            log.warning("%s; the samples of its shards are not counted", e)
            return None
        if found is None:
            return None
        counts.update(zip(remote, found, strict=True))
    by_dir: dict[Path, list[str]] = {}
    for u in urls:
        if not _is_url(u):
            by_dir.setdefault(Path(u).parent, []).append(u)
    for folder, local in by_dir.items():
        per = _from_manifest(folder, {Path(u).name for u in local})
        for u in local:
            n = per[Path(u).name]
            counts[u] = n if n is not None else _count_tar(Path(u))
    return [int(counts[u]) for u in urls]


def _from_manifest(folder: Path, names: set[str]) -> dict[str, int | None]:
    """Samples of each of the shards ``names`` from its manifest part; None where the part
    is missing, or damaged (not one avprep wrote, or counting more samples than its shard
    can hold: ``manifest.part_samples``; a warning says which): its tar is counted instead."""
    from avprep import manifest  # noqa: PLC0415  (pyarrow: only where counted)

    out: dict[str, int | None] = {}
    for name in names:
        part = folder / schema.MANIFEST_DIR / f"{Path(name).stem}.parquet"
        out[name] = None
        if not part.exists():
            continue
        try:
            shard_bytes = os.path.getsize(folder / name)
            out[name] = manifest.part_samples(manifest.read_part(part), part,
                                              shard_bytes=shard_bytes)  # fmt: skip
        except OSError:
            pass  # a shard that cannot be read: _count_tar counts what it can
        except manifest.DamagedPart as e:
            log.warning("%s; counting the samples of %s from its tar headers", e, name)
    return out


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


class StreamPlan:
    """Who reads what, epoch by epoch: a pure function of the seed, the shard list and each
    shard's sample count, ``clips_per_sample``, the readers (rank x loader worker), the
    epoch, and for an epoch a resume shared out anew, the items it had left (``pending``).

    An item is a clip: sample g of the shard list (shards in list order, samples in tar
    order) gives items ``g * k + j``, ``j < clips_per_sample``. Epoch e reads the shards in
    an order shuffled with (seed, e), and reader r (``rank * workers + worker``) takes the
    r-th contiguous span of that sequence: the spans differ by at most one item (which
    readers have the longer ones rotates with the epoch), so every item is read once an
    epoch, each reader from a few shards at a time. A reader's stream is its spans of
    epoch after epoch (a batch may hold the end of one and the start of the next), and it
    shuffles each span in blocks of ``block`` items (``block_order``; ``stages.BlockShuffle``),
    so where it stands is two numbers: the epoch and the items of that span's shuffled
    order passed. A resume goes straight to that block; no earlier block is read again.

    Without every shard's count (``pipe:`` URLs, remote shards without manifest parts) an
    item is a whole shard, positions are counted as clips arrive, and a resume reads its
    span again up to its block (its tar headers, json and windows; no JPEG is decoded).
    """

    def __init__(self, counts: list[int] | None, *, n_shards: int, clips_per_sample: int = 1,
                 seed: int = 0, block: int = 1, pending: dict | None = None) -> None:  # fmt: skip
        self.counts, self.n_shards, self.seed = counts, n_shards, seed
        self.k = clips_per_sample if counts is not None else 1
        self.block = max(1, int(block))
        self.pending: dict[int, list[list[int]]] = dict(pending or {})
        if counts is not None:
            self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]) * self.k
        self.n_items = int(self.offsets[-1]) if counts is not None else n_shards
        self._items: tuple[int, np.ndarray] | None = None

    @property
    def known(self) -> bool:
        """Whether every shard's count is known (items are clips, not whole shards)."""
        return self.counts is not None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_items": None}

    def with_pending(self, pending: dict) -> StreamPlan:
        """This plan, with ``pending`` as the items left of the epochs it names."""
        return StreamPlan(self.counts, n_shards=self.n_shards, clips_per_sample=self.k,
                          seed=self.seed, block=self.block, pending=pending)  # fmt: skip

    def items(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s items in reading order (int64)."""
        if self._items is not None and self._items[0] == epoch:
            return self._items[1]
        order = list(range(self.n_shards))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        if not self.known:
            ids = np.asarray(order, dtype=np.int64)
        else:
            o, none = self.offsets, [np.empty(0, np.int64)]
            ids = np.concatenate([np.arange(o[i], o[i + 1]) for i in order] or none)
        left = self.pending.get(epoch)
        if left is not None:
            keep = np.zeros(self.n_items, dtype=bool)
            for a, b in left:
                keep[a:b] = True
            ids = ids[keep[ids]]
        self._items = (epoch, ids)
        return ids

    def share(self, epoch: int, reader: int, readers: int) -> np.ndarray:
        """Reader ``reader``'s span of epoch ``epoch`` (of ``readers``), in reading order."""
        ids = self.items(epoch)
        if not self.known and 0 < len(ids) < readers:  # fewer shards than readers: read again
            ids = ids[np.arange(readers) % len(ids)]
        base, extra = divmod(len(ids), readers)
        sizes = base + ((np.arange(readers) - epoch) % readers < extra)
        start = int(sizes[:reader].sum())
        return ids[start : start + int(sizes[reader])]

    def pieces(self, share: np.ndarray, first: int):
        """``(shard, {item of the shard: position in the span})`` for the span's items from
        position ``first`` on, one shard at a time; ``(shard, None)`` (read it all) when
        counts are unknown, every shard of the span (positions come as clips arrive)."""
        if not self.known:
            yield from ((int(i), None) for i in share)
            return
        shard = np.searchsorted(self.offsets, share, side="right") - 1
        cuts = [first, *(np.flatnonzero(np.diff(shard[first:])) + 1 + first).tolist(), len(share)]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if a < b:
                s = int(shard[a])
                local = (share[a:b] - self.offsets[s]).tolist()
                yield s, dict(zip(local, range(a, b), strict=True))

    def block_order(self, epoch: int, reader: int, b: int, size: int) -> np.ndarray:
        """The order block ``b`` (``size`` items) of a reader's span is passed on in."""
        return np.random.default_rng([self.seed, epoch, reader, b, 7]).permutation(size)

    def passed(self, epoch: int, reader: int, readers: int, clips: int) -> np.ndarray:
        """The items of the first ``clips`` of the reader's shuffled span (counts known)."""
        share = self.share(epoch, reader, readers)
        b, r = divmod(min(clips, len(share)), self.block)
        lo = b * self.block
        head = share[:lo]
        if r:
            order = self.block_order(epoch, reader, b, min(self.block, len(share) - lo))
            head = np.concatenate([head, share[lo + order[:r]]])
        return head

    def rest(self, at: list[tuple[int, int]]) -> dict[int, list[list[int]]]:
        """What the epochs in progress have left when reader r stands at ``at[r]`` (epoch,
        clips passed): per epoch, the items no reader passed, as ``[start, end)`` ranges."""
        out = {}
        for e in range(min(e for e, _ in at), max(e for e, _ in at) + 1):
            left = np.zeros(self.n_items, dtype=bool)
            left[self.items(e)] = True
            for r, (er, clips) in enumerate(at):
                if er > e:
                    left[self.share(e, r, len(at))] = False
                elif er == e:
                    left[self.passed(e, r, len(at), clips)] = False
            out[e] = to_ranges(np.flatnonzero(left))
        return out


def to_ranges(idx: np.ndarray) -> list[list[int]]:
    """Sorted distinct integers -> ``[[start, end), ...]`` (plain data)."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts, ends = idx[np.r_[0, breaks]], idx[np.r_[breaks - 1, len(idx) - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, ends, strict=True)]


class EpochShards(IterableDataset):
    """This reader's shards (``{"url"}`` dicts), span after span of ``plan``, from where
    ``start[worker]`` (``[epoch, clips, batches]``) says it stands, else from the shared
    epoch's first item. Before each shard it tells ``tag.begin`` which of its clips are this
    reader's, at which positions of the span (``stages.PlannedWindow``)."""

    def __init__(self, urls: list[str], plan: StreamPlan, *, rank: int, world_size: int,
                 epoch: SharedEpoch, start: list[list[int]] | None = None, tag=None) -> None:  # fmt: skip
        super().__init__()
        self.urls, self.plan, self.rank, self.world_size = list(urls), plan, rank, world_size
        self.epoch, self.start, self.tag = epoch, start, tag

    def __iter__(self):
        worker, n_workers = worker_coords()
        readers, reader = self.world_size * n_workers, self.rank * n_workers + worker
        epoch, clips = self.start[worker][:2] if self.start else (self.epoch.get(), 0)
        while True:
            share = self.plan.share(epoch, reader, readers)
            first = clips // self.plan.block * self.plan.block
            length = len(share) if self.plan.known else -1
            new = True
            for shard, wanted in self.plan.pieces(share, first):
                if self.tag is not None:
                    self.tag.begin(epoch=epoch, reader=reader, shard=shard, wanted=wanted,
                                   first=first, skip=clips, length=length, new_span=new)  # fmt: skip
                new = False
                yield {"url": self.urls[shard]}
            epoch, clips = epoch + 1, 0
