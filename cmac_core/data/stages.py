"""Named, picklable pipeline stages (no lambdas: they break loader workers).

samples -> ``SafeDecode`` (json, npy; jpg kept as bytes; pickle refused) ->
``ClipWindow`` (choose the window, keep its frames and columns; from a v2 shard
``data.seek`` reads just those, and hands ``ClipWindow`` the same sample read lazily; in
training through ``PlannedWindow``, which cuts only this reader's clips) ->
``BlockShuffle`` (a reader's span shuffled a block at a time) -> ``DecodeFrames``
(JPEG-decode only the window's frames) -> lists of clips -> ``Augment`` (augment each
clip into its slot of the batch).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch.utils.data import default_collate

from avprep import read_sample, schema
from avprep.schema import SampleError
from cmac_core.data import batch_memory
from cmac_core.data.augment import (
    crop_resize,
    draw_crop,
    jitter_factors,
    spec_norm,
    spec_to_tensor,
)
from cmac_core.data.batch_memory import batch_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.damage import SchemaVersionError, UnsafeShardError
from cmac_core.data.ranges import MemFrames, take
from cmac_core.data.shards import SharedEpoch, worker_coords
from cmac_core.data.sync import sync_pair

# Members whose decoding would run pickle: never decoded from shards of strangers.
PICKLE_EXTS = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "mp", "msgpack", "joblib"}
FRAME_MEMBERS = tuple(schema.frame_member(i) for i in range(schema.MAX_FRAMES))


class SafeDecode:
    """Raw tar sample -> ``{key, meta, spec, jpegs}``; only json, npy and jpg are touched.

    Everything is checked against the shard format (``avprep.schema``: the key, the
    json's fields and ranges, the members present, the spectrogram's header against its
    bytes, finite values) before it is used; a sample that fails raises SampleError,
    which readers record as a damaged sample. Pickle members and a schema version this
    avprep does not read raise UnsafeShardError and SchemaVersionError: they stop the run.
    ``jpegs`` is a sequence of each frame's JPEG bytes (v2: ``MemFrames``, slices of the
    frames member made when asked for); ``meta`` as ``schema.check_sample`` gives it.
    """

    def __call__(self, sample: dict) -> dict:
        key, url = sample["__key__"], sample.get("__url__", "?")
        check_members(key, url, (n for n in sample if not n.startswith("__")))
        schema.check_key(key)
        if schema.JSON not in sample:
            raise SampleError(f"sample {key}: no json member")
        meta = parse_json(key, url, sample[schema.JSON])
        meta = schema.check_sample(key, meta, (n for n in sample if not n.startswith("__")))
        spec = read_spec(key, sample[schema.SPEC], meta)
        if meta["schema_version"] == 1:
            jpegs = [sample[name] for name in FRAME_MEMBERS[: len(meta["frame_times"])]]
        else:
            schema.check_frames_member(meta, len(sample[schema.FRAMES]))
            jpegs = MemFrames(sample[schema.FRAMES], meta["frame_offsets"])
        return {"key": key, "meta": meta, "spec": spec, "jpegs": jpegs}


def check_members(key: str, url: str, names) -> None:
    """UnsafeShardError for a member whose decoding would run pickle."""
    for name in names:
        if name.rsplit(".", 1)[-1].lower() in PICKLE_EXTS:
            raise UnsafeShardError(
                f"refusing pickle-based member {schema.shown(f'{key}.{name}')} in {url}"
            )


def parse_json(key: str, url: str, data: bytes) -> dict:
    """A sample's json, parsed; SampleError when it is not an avprep sample's, and
    SchemaVersionError for a schema version this avprep does not read."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, nesting too deep
        raise SampleError(f"sample {key}: its json does not parse ({type(e).__name__})") from e
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise SampleError(f"sample {key}: its json is not an avprep sample's")
    version = meta["schema_version"]
    if version not in schema.READ_VERSIONS or isinstance(version, bool):
        raise SchemaVersionError(
            f"{url}: shard schema version {schema.shown(version)}, this avprep reads "
            f"{' and '.join(str(v) for v in schema.READ_VERSIONS)}"
        )
    return meta


def read_spec(key: str, npy: bytes, meta: dict) -> np.ndarray:
    """A spectrogram member -> ``[n_mels, n_columns]`` (a view of ``npy``), finite, checked."""
    return read_sample.npy_array(key, npy, meta)


class _Seeded:
    """A stage with a random generator seeded per (seed, epoch, rank, loader worker), and
    per stage (``STREAM``): stages draw from independent streams."""

    STREAM = 0

    def __init__(self, *, seed: int, rank: int, epoch: SharedEpoch | None) -> None:
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self._rng: np.random.Generator | None = None

    def rng(self) -> np.random.Generator:
        if self._rng is None:
            worker, _ = worker_coords()
            epoch = self.epoch.get() if self.epoch is not None else 0
            entropy = [self.seed, epoch, self.rank, worker] + ([self.STREAM] if self.STREAM else [])
            self._rng = np.random.default_rng(entropy)
        return self._rng

    def seed_for(self, *entropy: int) -> None:
        """Draw the next values from a generator seeded with (seed, *entropy) instead."""
        self._rng = np.random.default_rng([self.seed, *entropy, self.STREAM])


class BlockShuffle:
    """The shuffle of a reader's span (``shards.StreamPlan``): clips tagged ``"_at"`` by
    ``PlannedWindow`` come in span order; each block of ``plan.block`` positions is held
    (a clip's few JPEGs, not a whole segment) and passed on in ``plan.block_order``, each
    clip with ``"_out"``: ``(epoch, clips of its span's shuffled order passed with it)``.
    A resumed span drops the block's clips before its position (``skip``). Markers pass
    at once; the clips of other readers (``"_skip"``) are dropped."""

    def __init__(self, plan) -> None:
        self.plan = plan

    def __call__(self, src):
        at, held, span = None, {}, None
        for s in src:
            if "__error__" in s:
                yield s
                continue
            if s.get("_skip"):
                continue
            epoch, pos, *more = s.pop("_at")
            block = (epoch, pos // self.plan.block)
            if block != at:
                if held:
                    yield from self._flush(at, held, span)
                at, held = block, {}
            span, held[pos] = more, s
        if held:
            yield from self._flush(at, held, span)

    def _flush(self, at: tuple[int, int], held: dict, span: list):
        (epoch, b), (length, skip, reader) = at, span
        lo = b * self.plan.block
        size = min(self.plan.block, length - lo) if length >= 0 else len(held)
        for i, q in enumerate(self.plan.block_order(epoch, reader, b, size).tolist()):
            clip = held.get(lo + q)
            if clip is not None and lo + i >= skip:  # None: a damaged sample's
                clip["_out"] = (epoch, lo + i + 1)
                yield clip


class PlannedWindow:
    """``ClipWindow`` in the planned stream. ``EpochShards`` says before each shard which of
    its clips are this reader's (``begin``); ``ShardClips`` asks for the shard's clips in
    tar order, ``clips_per_sample`` per sample. Each of this reader's is cut with a
    generator seeded per item (seed, epoch, item: the same clip whichever reader cuts it)
    and tagged ``"_at"``: ``(epoch, position in the span, span length, clips to skip,
    reader)``; the others come back as ``{"key", "_skip": True}``, none of their frames
    read (a resume's way to its block, and a shard shared by two readers)."""

    def __init__(self, window: ClipWindow, plan) -> None:
        self.window, self.plan = window, plan
        self.key, self.sample, self.j, self.arrived = None, -1, 0, 0
        self.at: dict = {}
        self.cut = 0  # clips cut so far (what a resume re-reads, in tests and benchmarks)

    def begin(self, *, epoch: int, reader: int, shard: int, wanted: dict | None, first: int,
              skip: int, length: int, new_span: bool) -> None:  # fmt: skip
        self.at = {"epoch": epoch, "reader": reader, "shard": shard, "wanted": wanted,
                   "first": first, "skip": skip, "length": length}  # fmt: skip
        self.key, self.sample, self.j = None, -1, 0
        if new_span:
            self.arrived = 0

    def __call__(self, s: dict) -> dict:
        at = self.at
        if s["key"] != self.key:
            self.key, self.sample, self.j = s["key"], self.sample + 1, 0
        else:
            self.j += 1
        if at["wanted"] is None:  # counts unknown: positions as clips arrive
            pos, self.arrived = self.arrived, self.arrived + 1
            item = [at["reader"], pos]
        else:
            local = self.sample * self.plan.k + self.j
            pos = at["wanted"].get(local)
            item = [int(self.plan.offsets[at["shard"]]) + local]
        if pos is None or pos < at["first"]:
            return {"key": s["key"], "_skip": True}
        self.window.seed_for(at["epoch"], *item)
        clip = self.window(s)
        self.cut += 1
        clip["_at"] = (at["epoch"], pos, at["length"], at["skip"], at["reader"])
        return clip


class ClipWindow(_Seeded):
    """Pick ``clip_frames`` frames at a random offset and the spectrogram columns of the
    same seconds (``audio_seconds`` of them centred on the clip, when given).

    A sample whose spectrogram preset is not ``spec_preset`` (when given: the preset the
    run's normalisation is for) raises SampleError: it is recorded as damage."""

    def __init__(self, clip_frames: int, *, audio_offset_max_s: float = 0.0, audio_seconds: float = 0.0,
                 spec_preset: str = "", train: bool = True, sync_shift_min_s: float = 0.0,
                 sync_shift_max_s: float = 0.0, **seeding) -> None:  # fmt: skip
        super().__init__(**seeding)
        self.sync_shift_min_s, self.sync_shift_max_s = sync_shift_min_s, sync_shift_max_s
        self.clip_frames, self.audio_offset_max_s, self.train = (
            clip_frames,
            audio_offset_max_s,
            train,
        )
        self.audio_seconds, self.spec_preset = audio_seconds, spec_preset

    def __call__(self, s: dict) -> dict:
        check_preset(s["key"], s["meta"], self.spec_preset)
        if self.train and self.sync_shift_min_s > 0:
            return self._sync_pair(s)
        rng = self.rng() if self.train else None
        first = None if self.train else max(0, (len(s["jpegs"]) - self.clip_frames) // 2)
        w = choose_window(
            s["meta"],
            self.clip_frames,
            rng,
            audio_offset_max_s=self.audio_offset_max_s,
            first_frame=first,
            audio_seconds=self.audio_seconds,
        )
        idx = frame_indices(w, len(s["jpegs"]))
        return {"key": s["key"], "meta": s["meta"], "window": w, "jpegs": take(s["jpegs"], idx),
                "spec": cut_columns(s["spec"], w, s["meta"].get("spec_min"))}  # fmt: skip

    def _sync_pair(self, s: dict) -> dict:
        """The clip with ``spec`` (aligned) and ``spec_shifted`` (``data/sync.py``)."""
        pair = sync_pair(s["meta"], s["spec"].shape[1], self.clip_frames, self.rng(),
                         min_shift_s=self.sync_shift_min_s, max_shift_s=self.sync_shift_max_s,
                         audio_seconds=self.audio_seconds, key=s["key"])  # fmt: skip
        idx = frame_indices(pair.aligned, len(s["jpegs"]))
        pad = s["meta"].get("spec_min")  # both windows lie inside the spectrogram: never used
        return {"key": s["key"], "meta": s["meta"], "window": pair.aligned,
                "jpegs": take(s["jpegs"], idx), "spec": cut_columns(s["spec"], pair.aligned, pad),
                "spec_shifted": cut_columns(s["spec"], pair.shifted, pad), "shift_s": pair.shift_s}  # fmt: skip


def check_preset(key: str, meta: dict, preset: str) -> None:
    """SampleError when ``preset`` is given and the sample's spectrogram is of another."""
    have = meta["spec"].get("preset")
    if preset and have != preset:
        raise SampleError(
            f"sample {key}: spectrogram preset {schema.shown(have)}, but this model's "
            f"normalisation is for {preset} (data.spec_preset)"
        )


def video_id_hash(key: str) -> int:
    """A signed 64-bit integer naming the source video of sample ``key`` (the same in
    every process, unlike ``hash``): clips with equal ones come from one video."""
    video_id, _ = schema.split_key(key)
    digest = hashlib.blake2b(video_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class DecodeFrames:
    """JPEG bytes of the window -> ``frames`` ``[T, H, W, 3]`` uint8 (SampleError for a
    corrupt JPEG or frames of different sizes)."""

    def __call__(self, s: dict) -> dict:
        return {**s, "frames": decode_jpegs(s["key"], s.pop("jpegs"))}


def decode_jpegs(key: str, jpegs: list[bytes]) -> np.ndarray:
    """JPEG bytes -> ``[T, H, W, 3]`` uint8; SampleError for a corrupt JPEG or frames of
    different sizes (``avprep.read_sample.decode_jpegs``)."""
    return read_sample.decode_jpegs(key, jpegs)


class Augment(_Seeded):
    """A list of clips -> the batch ``{"damage", "key", "video_id" [B] int64 (``video_id_hash``),
    "video" [B, 3, T, crop, crop] uint8, "jitter" [B, 3], "spec" [B, 1, n_mels, n_columns]
    float32, "start_s" [B] float64}``; clips with a synchronization negative (``ClipWindow``
    with ``sync_shift_min_s``) add ``"spec_shifted"`` (as ``spec``) and ``"shift_s"`` [B].
    With ``data.resize_on = device`` the crops are not resized here: ``"video"`` is
    ``[B, T, H, W, 3]`` uint8 and ``"crops"`` ``[B, 3]`` (``cut_crops``).

    Each clip is cropped straight into its slot of the batch tensor, which a
    loader worker allocates in shared memory (as ``default_collate`` does), so
    no clip is copied again on its way to the trainer; the trainer applies the
    colour jitter and normalisation on its device (``augment.finish_video``) and hands
    the memory back (``batch["memory"]``, ``batch_memory.release``) for a later batch.

    Each batch draws from its own generator, seeded per (seed, epoch, rank, loader worker,
    batch index): a resumed reader (``start``, ``data.position``) needs no replay of the
    batches before. Training batches add ``"reader"``: ``{"worker", "epoch", "clips",
    "batches", "epochs"}``, where that worker's stream stands after this batch (its last
    clip's ``"_out"``, ``BlockShuffle``; the batches it made), and each clip's epoch.
    """

    STREAM = 2

    def __init__(self, data_cfg, *, train: bool = True, start: list[list[int]] | None = None,
                 **seeding) -> None:  # fmt: skip
        super().__init__(**seeding)
        self.cfg, self.train, self.start = data_cfg, train, start
        self._batch: int | None = None

    def batch_rng(self) -> np.random.Generator:
        """The next batch's generator (and its index, counted in ``self._batch``)."""
        worker, _ = worker_coords()
        if self._batch is None:
            self._batch = self.start[worker][2] if self.start else 0
        epoch = self.epoch.get() if self.epoch is not None else 0
        self._batch += 1
        return np.random.default_rng([self.seed, epoch, self.rank, worker, self.STREAM,
                                      self._batch - 1])  # fmt: skip

    def __call__(self, clips: list[dict]) -> dict:
        c = self.cfg
        rng = self.batch_rng() if self.train else None
        on_device = c.resize_on == "device"
        t = len(clips[0]["frames"])
        if not on_device:
            video, ticket = batch_tensor((len(clips), 3, t, c.crop_px, c.crop_px), torch.uint8)
        boxes = []
        jitter = torch.empty(len(clips), 3)
        specs, shifted = [], []
        masks = {"time_masks": c.spec_time_masks, "freq_masks": c.spec_freq_masks,
                 "mask_frac": c.spec_mask_frac}  # fmt: skip
        for i, s in enumerate(clips):
            if on_device:  # the box drawn as crop_resize draws it; cut out below
                h, w = s["frames"].shape[1:3]
                boxes.append(draw_crop(h, w, rng, scale=c.crop_scale, flip_p=c.flip_p))
            else:
                crop_resize(
                    s["frames"], c.crop_px, rng, scale=c.crop_scale, flip_p=c.flip_p, out=video[i]
                )
            jitter[i] = torch.tensor(jitter_factors(rng, c.color_jitter))
            mean, std = spec_norm(c, s["meta"])
            specs.append(spec_to_tensor(s["spec"], rng, mean=mean, std=std, **masks))
            if "spec_shifted" in s:  # the synchronization negative, normalised and masked alike
                shifted.append(spec_to_tensor(s["spec_shifted"], rng, mean=mean, std=std, **masks))
        crops = {}
        if on_device:
            video, crops["crops"], ticket = cut_crops([s["frames"] for s in clips], boxes)
        sync = {} if not shifted else {
            "spec_shifted": default_collate(shifted),
            "shift_s": torch.tensor([s["shift_s"] for s in clips], dtype=torch.float64),
        }  # fmt: skip
        return {
            "damage": [m for s in clips for m in s.get("damage", ())],  # dropped before these
            "key": [s["key"] for s in clips],
            "video_id": torch.tensor([video_id_hash(s["key"]) for s in clips], dtype=torch.int64),
            "video": video,
            batch_memory.KEY: ticket,  # batch_memory.release() once the video is copied out
            **crops,
            "jitter": jitter,
            "spec": default_collate(specs),  # in a loader worker: stacked into shared memory
            "start_s": torch.tensor([s["window"].start_s for s in clips], dtype=torch.float64),
            **sync,
            **({"reader": {"worker": worker_coords()[0], "epoch": clips[-1]["_out"][0],
                           "clips": clips[-1]["_out"][1], "batches": self._batch,
                           "epochs": [s["_out"][0] for s in clips]}}
               if self.train and "_out" in clips[-1] else {}),
        }  # fmt: skip


def cut_crops(frames: list[np.ndarray], boxes: list[tuple]) -> tuple:
    """Each clip's ``[T, H, W, 3]`` frames cut to its box ``(top, left, height, width,
    flip)`` -> ``[B, T, Hmax, Wmax, 3]`` uint8, each crop in its top-left corner (the rest
    left as it was: never read), ``[B, 3]`` int64 (height, width, flip): what
    ``augment.finish_video`` resizes on the training device, and the batch memory's ticket."""
    hmax, wmax = max(b[2] for b in boxes), max(b[3] for b in boxes)
    out, ticket = batch_tensor((len(frames), len(frames[0]), hmax, wmax, 3), torch.uint8)
    dst = out.numpy()
    for i, (f, (top, left, h, w, _)) in enumerate(zip(frames, boxes, strict=True)):
        dst[i, :, :h, :w] = f[:, top : top + h, left : left + w]
    sizes = torch.tensor([(b[2], b[3], int(b[4])) for b in boxes], dtype=torch.int64)
    return out, sizes, ticket
