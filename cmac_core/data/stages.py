"""Named, picklable pipeline stages (no lambdas: they break loader workers).

samples -> ``SafeDecode`` (json, npy; jpg kept as bytes; pickle refused) ->
``ClipWindow`` (choose the window, keep its frames and columns) ->
``DecodeFrames`` (JPEG-decode only the window's frames) -> lists of clips ->
``Augment`` (augment each clip into its slot of the batch).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import simplejpeg
import torch
from torch.utils.data import default_collate, get_worker_info

from avprep import schema
from cmac_core.data.augment import crop_resize, jitter_factors, spec_to_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.shards import SharedEpoch, worker_coords

# Members whose decoding would run pickle: never decoded from shards of strangers.
PICKLE_EXTS = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "mp", "msgpack", "joblib"}
FRAME_MEMBERS = tuple(schema.frame_member(i) for i in range(schema.MAX_FRAMES))


class UnsafeShardError(ValueError):
    pass


class SchemaVersionError(ValueError):
    pass


class ShardFormatError(ValueError):
    """A tar that is not an avprep shard (or a sample cut short in a damaged one)."""


class SafeDecode:
    """Raw tar sample -> ``{key, meta, spec, jpegs}``; only json, npy and jpg are touched."""

    def __call__(self, sample: dict) -> dict:
        key, url = sample["__key__"], sample.get("__url__", "?")
        for name in sample:
            if not name.startswith("__") and name.rsplit(".", 1)[-1].lower() in PICKLE_EXTS:
                raise UnsafeShardError(f"refusing pickle-based member {key}.{name} in {url}")
        if "json" not in sample or schema.SPEC not in sample:
            raise ShardFormatError(
                f"sample {key} in {url} lacks json or {schema.SPEC}: not an avprep shard"
            )
        meta = json.loads(sample["json"])
        version = meta.get("schema_version")
        if version != schema.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{url}: shard schema version {version}, this avprep reads {schema.SCHEMA_VERSION}"
            )
        spec = np.load(io.BytesIO(sample[schema.SPEC]), allow_pickle=False)
        jpegs = [sample[name] for name in FRAME_MEMBERS[: len(meta["frame_times"])]]
        return {"key": key, "meta": meta, "spec": spec, "jpegs": jpegs}


class _Seeded:
    """A stage with a random generator seeded per (seed, epoch, rank, loader worker)."""

    def __init__(self, *, seed: int, rank: int, epoch: SharedEpoch | None) -> None:
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self._rng: np.random.Generator | None = None

    def rng(self) -> np.random.Generator:
        if self._rng is None:
            worker, _ = worker_coords()
            epoch = self.epoch.get() if self.epoch is not None else 0
            self._rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        return self._rng


class ClipWindow(_Seeded):
    """Pick ``clip_frames`` frames at a random offset and the spectrogram columns of the same seconds."""

    def __init__(
        self, clip_frames: int, *, audio_offset_max_s: float = 0.0, train: bool = True, **seeding
    ) -> None:
        super().__init__(**seeding)
        self.clip_frames, self.audio_offset_max_s, self.train = (
            clip_frames,
            audio_offset_max_s,
            train,
        )

    def __call__(self, s: dict) -> dict:
        rng = self.rng() if self.train else None
        first = None if self.train else max(0, (len(s["jpegs"]) - self.clip_frames) // 2)
        w = choose_window(
            s["meta"],
            self.clip_frames,
            rng,
            audio_offset_max_s=self.audio_offset_max_s,
            first_frame=first,
        )
        idx = frame_indices(w, len(s["jpegs"]))
        return {"key": s["key"], "meta": s["meta"], "window": w, "jpegs": [s["jpegs"][i] for i in idx],
                "spec": cut_columns(s["spec"], w)}  # fmt: skip


class DecodeFrames:
    """JPEG bytes of the window -> ``frames`` ``[T, H, W, 3]`` uint8."""

    def __call__(self, s: dict) -> dict:
        frames = np.stack([simplejpeg.decode_jpeg(b, colorspace="RGB") for b in s.pop("jpegs")])
        return {**s, "frames": frames}


class Augment(_Seeded):
    """A list of clips -> the batch ``{"key", "video" [B, 3, T, crop, crop] uint8, "jitter"
    [B, 3], "spec" [B, 1, n_mels, n_columns] float32, "start_s" [B] float64}``.

    Each clip is cropped straight into its slot of the batch tensor, which a
    loader worker allocates in shared memory (as ``default_collate`` does), so
    no clip is copied again on its way to the trainer; the trainer applies the
    colour jitter and normalisation on its device (``augment.finish_video``).
    """

    def __init__(self, data_cfg, *, train: bool = True, **seeding) -> None:
        super().__init__(**seeding)
        self.cfg, self.train = data_cfg, train

    def __call__(self, clips: list[dict]) -> dict:
        c = self.cfg
        rng = self.rng() if self.train else None
        video = batch_tensor(
            (len(clips), 3, len(clips[0]["frames"]), c.crop_px, c.crop_px), torch.uint8
        )
        jitter = torch.empty(len(clips), 3)
        specs = []
        for i, s in enumerate(clips):
            crop_resize(
                s["frames"], c.crop_px, rng, scale=c.crop_scale, flip_p=c.flip_p, out=video[i]
            )
            jitter[i] = torch.tensor(jitter_factors(rng, c.color_jitter))
            specs.append(spec_to_tensor(s["spec"], rng, mean=c.spec_mean, std=c.spec_std,
                                        time_masks=c.spec_time_masks, freq_masks=c.spec_freq_masks,
                                        mask_frac=c.spec_mask_frac))  # fmt: skip
        return {
            "key": [s["key"] for s in clips],
            "video": video,
            "jitter": jitter,
            "spec": default_collate(specs),  # in a loader worker: stacked into shared memory
            "start_s": torch.tensor([s["window"].start_s for s in clips], dtype=torch.float64),
        }


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor; inside a loader worker in shared memory, the way
    ``default_collate`` allocates its batches, so sending it copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(math.prod(shape))
    return elem.new(storage).view(shape)
