"""The training stream: shards (``shards.StreamPlan``: each reader's span of each epoch) ->
clips (``data.seek``: v2 shards by seeking, others decoded whole; only this reader's) ->
shuffle (a block of the span at a time) -> frames -> batch -> augment."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import webdataset as wds

from cmac_core.config import ConfigError, DataConfig
from cmac_core.data.augment import SpecNormError, preset_norm
from cmac_core.data.damage import (
    Damage,
    DropDamaged,
    OrMarker,
    ShardFormatError,
    ShardSamples,
    decode_or_marker,
    is_marker,
)
from cmac_core.data.position import RotateReaders
from cmac_core.data.seek import ShardClips
from cmac_core.data.shards import (
    EpochShards,
    SharedEpoch,
    StreamPlan,
    check_shards,
    resolve,
    shard_counts,
)
from cmac_core.data.stages import (
    Augment,
    BlockShuffle,
    ClipWindow,
    DecodeFrames,
    PlannedWindow,
    SafeDecode,
)
from cmac_core.data.worker_signals import StoppedByParent
from cmac_core.errors import CmacError

log = logging.getLogger(__name__)


class LoaderTimeoutError(CmacError):
    """No batch came from the loader workers within ``data.loader_timeout_s``."""


class TimedLoader:
    """A DataLoader whose timeout ends the run with one line (LoaderTimeoutError) instead of
    torch's RuntimeError; iterating it iterates the loader."""

    def __init__(self, loader: wds.WebLoader, timeout_s: float) -> None:
        self.loader, self.timeout_s = loader, timeout_s

    def __iter__(self):
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except RuntimeError as e:
                if self.timeout_s and "timed out" in str(e):
                    raise LoaderTimeoutError(
                        f"no training batch from the loader workers in {self.timeout_s:g} s "
                        "(data.loader_timeout_s): a worker hung or the shards' storage stalled"
                    ) from None
                raise
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


@dataclass
class Counted:
    """A training run's shards, read once (``count_shards``) and shared by every rank: the
    readable ones, why each other one is left out, and each readable one's samples (None:
    not known without reading them)."""

    urls: list[str]
    bad: dict[str, str]
    counts: list[int] | None


def count_shards(shards: str | list[str]) -> Counted:
    """``Counted`` for the shard spec ``shards`` (listing, the shards' ends, manifests)."""
    urls, bad = check_shards(resolve(shards))
    return Counted(urls, bad, shard_counts(urls) if urls else None)


@dataclass
class TrainStream:
    loader: TimedLoader
    epoch: SharedEpoch
    urls: list[str]
    n_samples: int | None
    steps_per_epoch: int | None  # batches per rank per epoch, equal on every rank
    damage: Damage  # shards left out before reading (empty, not tars, cut short)
    start: list[list[int]]  # [epoch, clips, batches] per reader of this rank ([]: fresh)
    plan: StreamPlan  # who reads what (a resume sets its ``pending`` before iterating)


def first_preset(urls: list[str]) -> str | None:
    """The spectrogram preset of the first valid sample of ``urls`` (None: none is valid)."""
    if not urls:
        return None  # no readable shard: train_stream says so in one line
    for raw in wds.DataPipeline(wds.SimpleShardList(urls), ShardSamples()):
        sample = decode_or_marker(raw, SafeDecode())
        if not is_marker(sample):
            return sample["meta"]["spec"].get("preset")
    return None


def with_spec_norm(shards: str | list[str], cfg: DataConfig) -> DataConfig:
    """``cfg`` with its log-mel normalisation fixed before a run: unset (None) numbers
    become those of the shards' preset (the first valid sample's; ``SPEC_NORMS``), and
    ``spec_preset`` records it, so the run's config and checkpoints say what was applied
    and later samples of another preset are damage. Numbers given are kept as they are.
    Without a valid sample, ``cfg`` comes back unchanged (the stream says why)."""
    if cfg.spec_mean is not None:
        return cfg
    preset = cfg.spec_preset
    if not preset:
        urls, _ = check_shards(resolve(shards))
        preset = first_preset(urls)
        if preset is None:
            return cfg
    try:
        mean, std = preset_norm(preset)
    except SpecNormError as e:
        raise ConfigError(str(e)) from None
    return dataclasses.replace(cfg, spec_mean=mean, spec_std=std, spec_preset=preset)


def train_pipeline(urls: list[str], cfg: DataConfig, *, batch_size: int, rank: int, world_size: int,
                   epoch: SharedEpoch, seed: int, seek: bool = True,
                   start: list[list[int]] | None = None, plan: StreamPlan | None = None) -> wds.DataPipeline:  # fmt: skip
    """Damaged samples and shards become markers (``cmac_core.data.damage``), are dropped
    before the shuffle's blocks and after frame decoding, and ride on the next batch as
    ``batch["damage"]``; no error sleeps, and a stream with nothing readable left raises.
    ``seek``: read v2 shards by seeking (``data.seek``; False: decode every sample whole,
    as for v1 shards; the same clips either way). ``plan``: who reads what
    (``shards.StreamPlan``; None: made from the shards' counts). ``start``: per loader
    worker of this rank, ``[epoch, clips, batches]`` already trained on (``data.position``):
    each worker goes straight to the block of its span that holds that position (it reads
    that block's tar headers, json and windows again, decodes nothing it skips) and on."""
    if plan is None:
        plan = StreamPlan(shard_counts(urls), n_shards=len(urls), seed=seed,
                          clips_per_sample=cfg.clips_per_sample, block=cfg.shuffle_buffer)  # fmt: skip
    seeding = {"seed": seed, "rank": rank, "epoch": epoch}
    window = ClipWindow(cfg.clip_frames, audio_offset_max_s=cfg.audio_offset_max_s,
                        audio_seconds=cfg.audio_seconds, spec_preset=cfg.spec_preset,
                        sync_shift_min_s=cfg.sync_shift_min_s, sync_shift_max_s=cfg.sync_shift_max_s,
                        **seeding)  # fmt: skip
    planned = PlannedWindow(window, plan)  # EpochShards tells it which clips are this reader's
    return wds.DataPipeline(
        EpochShards(
            urls, plan, rank=rank, world_size=world_size, epoch=epoch, start=start, tag=planned
        ),
        ShardClips(planned, clips_per_sample=cfg.clips_per_sample, seek=seek),
        # Shuffled once cut to its window: a block holds a clip's few JPEGs, not a whole
        # segment (~40 KB instead of ~800 KB at 16 fps, 10 s, 128 px).
        BlockShuffle(plan),
        DropDamaged(len(urls), cfg.clips_per_sample),
        wds.map(OrMarker(DecodeFrames())),
        DropDamaged(len(urls), cfg.clips_per_sample),
        wds.batched(batch_size, collation_fn=list, partial=False),
        wds.map(Augment(cfg, start=start, **seeding)),
    )


def train_stream(
    shards: str | list[str],
    cfg: DataConfig,
    *,
    batch_size: int,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    pin_memory: bool = False,
    seek: bool = True,
    start: list[list[int]] | None = None,
    counted: Counted | None = None,
) -> TrainStream:
    """The training loader of ``shards``: an endless stream of augmented batches, equal in
    number on every rank. ``steps_per_epoch`` reads each sample once per epoch (with
    ``data.clips_per_sample`` clips of it); ``data.loader_timeout_s`` bounds the wait for a
    worker's batch. ``stream.start`` (``start``, or an empty list): where this rank's
    readers resume (``train_pipeline``), filled in place before the loader is iterated
    (and ``stream.plan.pending``, the items of epochs a resume shared out anew); the
    stream's ``epoch`` must then be the one its batches' augmentations are seeded with.
    ``counted``: the shards as ``count_shards`` gave them (on rank 0, shared), instead of
    listing, checking and counting them here."""
    start = [] if start is None else start
    counted = count_shards(shards) if counted is None else counted
    urls, bad, counts = counted.urls, counted.bad, counted.counts
    damage = Damage(cut_short=bad)
    if not urls:
        url, why = next(iter(bad.items()))
        raise ShardFormatError(
            f"no readable shard: all {len(bad)} are damaged or not tars (e.g. {url}: {why})"
        )
    epoch = SharedEpoch(0)
    readers = world_size * max(1, workers)
    n = None if counts is None else sum(counts)
    if n is not None and n * cfg.clips_per_sample < readers:
        raise ConfigError(
            f"{n * cfg.clips_per_sample} clips an epoch cannot give each of the {readers} "
            f"readers ({world_size} ranks x {max(1, workers)} loader workers) one: use fewer "
            "loader workers (optim.workers)"
        )
    if n is None and len(urls) < readers and rank == 0:
        log.warning(
            "%d shards of unknown length for %d readers (%d ranks x %d loader workers): "
            "readers read shards twice an epoch; write more, smaller shards "
            "(avprep shard --shard-max-samples)",
            len(urls), readers, world_size, max(1, workers),
        )  # fmt: skip
    steps = None if n is None else n * cfg.clips_per_sample // (world_size * batch_size)
    plan = StreamPlan(counts, n_shards=len(urls), clips_per_sample=cfg.clips_per_sample,
                      seed=seed, block=cfg.shuffle_buffer)  # fmt: skip
    pipe = train_pipeline(urls, cfg, batch_size=batch_size, rank=rank, world_size=world_size,
                          epoch=epoch, seed=seed, seek=seek, start=start, plan=plan)  # fmt: skip
    timeout = cfg.loader_timeout_s if workers > 0 else 0.0  # torch's timeout needs workers
    loader = wds.WebLoader(
        pipe,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        timeout=timeout,
        worker_init_fn=StoppedByParent(RotateReaders(start)) if workers > 0 else None,
    )
    return TrainStream(loader=TimedLoader(loader, timeout), epoch=epoch, urls=urls, n_samples=n,
                       steps_per_epoch=steps, damage=damage, start=start, plan=plan)  # fmt: skip
