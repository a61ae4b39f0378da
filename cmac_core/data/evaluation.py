"""The evaluation stream: every sample exactly once, fixed clip windows, no augmentation.

Each rank reads a disjoint set of shards (``urls[rank::world]``), each loader
worker a disjoint subset of those; nothing is resampled or repeated. A sample
becomes K clips whose windows are placed uniformly across the segment (by
default as many as it takes to cover it), centre-cropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import webdataset as wds

from cmac_core.config import DataConfig
from cmac_core.data.augment import crop_resize, spec_to_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.stages import SafeDecode, SchemaVersionError, UnsafeShardError


def window_starts(n_frames: int, clip_frames: int, clips: int | None) -> list[int]:
    """First frames of K windows spread uniformly; K = enough to cover the segment by default."""
    k = clips if clips else max(1, math.ceil(n_frames / clip_frames))
    last = max(0, n_frames - clip_frames)
    return sorted({int(round(x)) for x in np.linspace(0, last, k)}) if k > 1 else [last // 2]


class EvalClips:
    """Decoded sample -> ``{key, meta, video [K, 3, T, S, S] uint8, spec [K, 1, F, N]}``."""

    def __init__(self, cfg: DataConfig, clips_per_segment: int | None = None) -> None:
        self.cfg, self.clips = cfg, clips_per_segment

    def __call__(self, s: dict) -> dict:
        import simplejpeg  # noqa: PLC0415

        c, meta = self.cfg, s["meta"]
        videos, specs = [], []
        cache: dict[int, np.ndarray] = {}
        for first in window_starts(len(s["jpegs"]), c.clip_frames, self.clips):
            w = choose_window(meta, c.clip_frames, None, first_frame=first)
            idx = frame_indices(w, len(s["jpegs"]))
            for i in idx:
                if i not in cache:
                    cache[i] = simplejpeg.decode_jpeg(s["jpegs"][i], colorspace="RGB")
            videos.append(crop_resize(np.stack([cache[i] for i in idx]), c.crop_px, None))
            specs.append(
                spec_to_tensor(cut_columns(s["spec"], w), None, mean=c.spec_mean, std=c.spec_std)
            )
        return {
            "key": s["key"],
            "meta": meta,
            "video": torch.stack(videos),
            "spec": torch.stack(specs),
        }


class ShardSamples:
    """Shard URLs -> raw tar samples. A shard that cannot be read on (damaged, cut short,
    not a tar) ends with ``{"__error__": message, "__url__": url}`` instead of stopping
    the run: the samples read before the damage still count, and the caller reports it."""

    def __call__(self, src):
        for shard in src:
            try:
                yield from wds.tarfile_to_samples()(iter([shard]))
            except Exception as e:  # tarfile, gzip and I/O errors alike
                yield error_marker(shard["url"], e)


def error_marker(url: str, e: Exception) -> dict:
    first = str(e.args[0] if e.args else e).strip().splitlines()
    return {"__error__": f"{type(e).__name__}: {first[0] if first else ''}"[:300], "__url__": url}


def decode_or_marker(raw: dict, *stages) -> dict:
    """``raw`` through ``stages`` in turn, or an error marker for a sample that is not an
    avprep sample (a damaged shard's last, partial one, a corrupt member). Pickle members
    and other schema versions stop the run: they concern every shard, not one."""
    sample = raw
    try:
        for stage in stages:
            sample = stage(sample)
        return sample
    except (UnsafeShardError, SchemaVersionError):
        raise
    except Exception as e:  # a corrupt member, a sample cut short
        return error_marker(raw.get("__url__", "?"), e)


class EvalSample:
    """Raw sample -> eval clips (``EvalClips``), or a marker: ``{"__skipped__": key}`` for a
    key already done (resume), an error marker as ``decode_or_marker`` gives it."""

    def __init__(self, cfg: DataConfig, clips_per_segment: int | None, done: set[str]) -> None:
        self.decode, self.clips, self.done = SafeDecode(), EvalClips(cfg, clips_per_segment), done

    def __call__(self, raw: dict) -> dict:
        if "__error__" in raw:
            return raw
        if raw["__key__"] in self.done:
            return {"__skipped__": raw["__key__"]}
        return decode_or_marker(raw, self.decode, self.clips)


def eval_loader(urls: list[str], cfg: DataConfig, *, clips_per_segment: int | None, workers: int,
                done: set[str] | None = None) -> torch.utils.data.DataLoader:  # fmt: skip
    """Every sample of ``urls`` once, as ``EvalSample`` gives it (clips or a marker)."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        ShardSamples(),
        wds.map(EvalSample(cfg, clips_per_segment, done or set())),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=min(workers, len(urls)),
                         prefetch_factor=4 if workers else None)  # fmt: skip
