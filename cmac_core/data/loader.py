"""The training stream: shards -> decode -> clip window -> shuffle -> frames -> batch -> augment."""

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
from cmac_core.data.shards import EpochShards, SharedEpoch, check_shards, count_samples, resolve
from cmac_core.data.stages import Augment, ClipWindow, DecodeFrames, SafeDecode

log = logging.getLogger(__name__)


@dataclass
class TrainStream:
    loader: wds.WebLoader
    epoch: SharedEpoch
    urls: list[str]
    n_samples: int | None
    steps_per_epoch: int | None  # batches per rank per epoch, equal on every rank
    damage: Damage  # shards left out before reading (empty, not tars, cut short)


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
                   epoch: SharedEpoch, seed: int) -> wds.DataPipeline:  # fmt: skip
    """Damaged samples and shards become markers (``cmac_core.data.damage``), are dropped
    before the shuffle buffer and after frame decoding, and ride on the next batch as
    ``batch["damage"]``; no error sleeps, and a stream with nothing readable left raises."""
    seeding = {"seed": seed, "rank": rank, "epoch": epoch}
    window = ClipWindow(cfg.clip_frames, audio_offset_max_s=cfg.audio_offset_max_s,
                        audio_seconds=cfg.audio_seconds, spec_preset=cfg.spec_preset,
                        sync_shift_min_s=cfg.sync_shift_min_s, sync_shift_max_s=cfg.sync_shift_max_s,
                        **seeding)  # fmt: skip
    return wds.DataPipeline(
        EpochShards(urls, rank=rank, world_size=world_size, epoch=epoch, seed=seed),
        ShardSamples(),
        wds.map(OrMarker(SafeDecode(), window)),
        DropDamaged(len(urls)),
        # Shuffled once cut to its window: the buffer holds a clip's few JPEGs, not a
        # whole segment (~40 KB instead of ~800 KB at 16 fps, 10 s, 128 px).
        wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 64)),
        wds.map(OrMarker(DecodeFrames())),
        DropDamaged(len(urls)),
        wds.batched(batch_size, collation_fn=list, partial=False),
        wds.map(Augment(cfg, **seeding)),
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
) -> TrainStream:
    urls, bad = check_shards(resolve(shards))
    damage = Damage(cut_short=bad)
    if not urls:
        url, why = next(iter(bad.items()))
        raise ShardFormatError(
            f"no readable shard: all {len(bad)} are damaged or not tars (e.g. {url}: {why})"
        )
    epoch = SharedEpoch(0)
    readers = world_size * max(1, workers)
    if len(urls) < readers and rank == 0:
        log.warning(
            "%d shards for %d readers (%d ranks x %d loader workers): readers sample shards "
            "with replacement; write more, smaller shards (avprep shard --shard-max-samples)",
            len(urls), readers, world_size, max(1, workers),
        )  # fmt: skip
    n = count_samples(urls)
    steps = None if n is None else n // (world_size * batch_size)
    pipe = train_pipeline(
        urls, cfg, batch_size=batch_size, rank=rank, world_size=world_size, epoch=epoch, seed=seed
    )
    loader = wds.WebLoader(
        pipe,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    return TrainStream(loader=loader, epoch=epoch, urls=urls, n_samples=n, steps_per_epoch=steps,
                       damage=damage)  # fmt: skip
