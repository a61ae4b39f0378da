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

from avprep import schema
from cmac_core.config import DataConfig
from cmac_core.data.augment import crop_resize, spec_norm, spec_to_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.damage import ShardSamples, decode_or_marker, is_marker
from cmac_core.data.stages import SafeDecode, check_preset, decode_jpegs
from cmac_core.data.worker_signals import StoppedByParent

# Clip windows a segment may be asked for: a sample holds at most schema.MAX_FRAMES frames,
# so no more windows start on distinct frames.
MAX_CLIPS = schema.MAX_FRAMES


def window_starts(n_frames: int, clip_frames: int, clips: int | None) -> list[int]:
    """First frames of K windows spread uniformly; K = enough to cover the segment by default.
    Windows start on distinct frames: K beyond the possible starts gives each start once."""
    last = max(0, n_frames - clip_frames)
    k = min(clips if clips else max(1, math.ceil(n_frames / clip_frames)), last + 1)
    return sorted({int(round(x)) for x in np.linspace(0, last, k)}) if k > 1 else [last // 2]


class EvalClips:
    """Decoded sample -> ``{key, meta, video [K, 3, T, S, S] uint8, spec [K, 1, F, N]}``.

    The windows' audio is as in training (``data.audio_seconds``, centred on each clip),
    normalised as in training (``data.spec_mean``/``spec_std``, or the preset's); a
    sample of another spectrogram preset than ``data.spec_preset`` is damage."""

    def __init__(self, cfg: DataConfig, clips_per_segment: int | None = None) -> None:
        self.cfg, self.clips = cfg, clips_per_segment

    def __call__(self, s: dict) -> dict:
        c, meta = self.cfg, s["meta"]
        videos, specs = [], []
        cache: dict[int, np.ndarray] = {}
        check_preset(s["key"], meta, c.spec_preset)
        mean, std = spec_norm(c, meta)  # what training used (the checkpoint's config)
        for first in window_starts(len(s["jpegs"]), c.clip_frames, self.clips):
            w = choose_window(meta, c.clip_frames, None, first_frame=first,
                              audio_seconds=c.audio_seconds)  # fmt: skip
            idx = frame_indices(w, len(s["jpegs"]))
            todo = sorted({i for i in idx if i not in cache})
            if todo:
                cache.update(
                    zip(todo, decode_jpegs(s["key"], [s["jpegs"][i] for i in todo]), strict=True)
                )
            videos.append(crop_resize(np.stack([cache[i] for i in idx]), c.crop_px, None))
            cut = cut_columns(s["spec"], w, meta.get("spec_min"))
            specs.append(spec_to_tensor(cut, None, mean=mean, std=std))
        return {
            "key": s["key"],
            "meta": meta,
            "video": torch.stack(videos),
            "spec": torch.stack(specs),
        }


class EvalSample:
    """Raw sample -> eval clips (``EvalClips``), or a marker: ``{"__skipped__": key}`` for a
    key already done (resume), a damage marker (``cmac_core.data.damage``). Each carries
    the shard it came from as ``__url__`` (so a key met twice can be named with its shards)."""

    def __init__(self, cfg: DataConfig, clips_per_segment: int | None, done: set[str]) -> None:
        self.decode, self.clips, self.done = SafeDecode(), EvalClips(cfg, clips_per_segment), done

    def __call__(self, raw: dict) -> dict:
        if is_marker(raw):
            return raw
        if raw["__key__"] in self.done:
            return {"__skipped__": raw["__key__"], "__url__": raw["__url__"]}
        out = decode_or_marker(raw, self.decode, self.clips)
        out.setdefault("__url__", raw["__url__"])
        return out


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
                         prefetch_factor=4 if workers else None,
                         worker_init_fn=StoppedByParent())  # fmt: skip
