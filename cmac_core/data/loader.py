"""The training stream: shards -> decode -> clip window -> shuffle -> frames -> batch -> augment."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import webdataset as wds

from cmac_core.config import DataConfig
from cmac_core.data.shards import EpochShards, SharedEpoch, count_samples, resolve
from cmac_core.data.stages import Augment, ClipWindow, DecodeFrames, SafeDecode

log = logging.getLogger(__name__)


@dataclass
class TrainStream:
    loader: wds.WebLoader
    epoch: SharedEpoch
    urls: list[str]
    n_samples: int | None
    steps_per_epoch: int | None  # batches per rank per epoch, equal on every rank


def train_pipeline(urls: list[str], cfg: DataConfig, *, batch_size: int, rank: int, world_size: int,
                   epoch: SharedEpoch, seed: int) -> wds.DataPipeline:  # fmt: skip
    seeding = {"seed": seed, "rank": rank, "epoch": epoch}
    return wds.DataPipeline(
        EpochShards(urls, rank=rank, world_size=world_size, epoch=epoch, seed=seed),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.map(SafeDecode()),
        wds.map(ClipWindow(cfg.clip_frames, audio_offset_max_s=cfg.audio_offset_max_s, **seeding)),
        # Shuffled once cut to its window: the buffer holds a clip's few JPEGs, not a
        # whole segment (~40 KB instead of ~800 KB at 16 fps, 10 s, 128 px).
        wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 64)),
        wds.map(DecodeFrames()),
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
    urls = resolve(shards)
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
    return TrainStream(loader=loader, epoch=epoch, urls=urls, n_samples=n, steps_per_epoch=steps)
