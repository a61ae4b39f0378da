"""Pretraining configuration: dataclasses with units in names, saved into the run dir.

``tiny`` is a width/depth-scaled model for CPU tests and the demo; ``base`` is
R(2+1)D-18 + ResNet-18 audio with the AVID clip setup (8 frames at 16 fps,
112 px crops, 128 log-mel bins). ``cmac_core.config_files.load`` reads a preset or a
YAML/JSON file and applies dotted overrides; the dataclasses' own checks here judge
every value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cmac_core.errors import CmacError

METHODS = ("cmac", "avid", "lla")


class ConfigError(CmacError):
    """A configuration value is out of range; the message names it."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Bound:
    """The values a number field may take: ``lo <= x <= hi`` (``lo < x`` when ``open_lo``),
    finite, an int where ``integer``. Generous for research use; absurd values fail early."""

    lo: float
    hi: float
    integer: bool = False
    open_lo: bool = False

    def holds(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, int if self.integer else (int, float)):
            return False
        return math.isfinite(x) and (self.lo < x if self.open_lo else self.lo <= x) and x <= self.hi

    def text(self, *, each: bool = False) -> str:
        kind = ("integers" if each else "an integer") if self.integer else (
            "finite numbers" if each else "a finite number")  # fmt: skip
        low = f"> {_number(self.lo)}" if self.open_lo else f">= {_number(self.lo)}"
        return f"{kind} {low} and <= {_number(self.hi)}"


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _validate(obj: Any, section: str, bounds: dict[str, Bound]) -> None:
    """Every field of the dataclass ``obj``: a bool where the field is one, a number within
    its bound, each number of a tuple within it; messages name ``section.field``."""
    for f in dataclasses.fields(obj):
        name, value = f"{section}.{f.name}", getattr(obj, f.name)
        if f.type == "bool":
            _check(isinstance(value, bool), f"{name} must be true or false, got {shown(value)}")
        elif f.name in bounds:
            b = bounds[f.name]
            each = f.type.startswith("tuple")
            ok = all(b.holds(x) for x in value) if each else b.holds(value)
            _check(ok, f"{name} must be {b.text(each=each)}, got {shown(value)}")


def _as_tuple(value: Any, name: str, n: int) -> tuple:
    _check(isinstance(value, (list, tuple)) and len(value) == n,
           f"{name} must be a list of {n} numbers, got {shown(value)}")  # fmt: skip
    return tuple(value)


MAX_WIDTH, MAX_BLOCKS = 8192, 64


SYNC_HEADS = ("pooled", "per_time", "per_time_attended")
RESIZE_ON = ("auto", "loader", "device")


@dataclass
class ModelConfig:
    video_widths: tuple[int, ...] = (64, 128, 256, 512)
    video_blocks: tuple[int, ...] = (2, 2, 2, 2)
    audio_widths: tuple[int, ...] = (64, 128, 256, 512)
    audio_blocks: tuple[int, ...] = (2, 2, 2, 2)
    head_hidden: int = 512
    embed_dim: int = 128
    # The audio encoder divides the mel axis by this (4, 8, 16 or 32: the last stages keep
    # frequency stride 1 below 32); time is always divided by 32. Same weights' shapes.
    audio_freq_stride: int = 32
    # Frequency tokens K: 0 = one per row the encoder leaves (n_mels / audio_freq_stride,
    # 4 for 128 bins); K > 0 = the rows average-pooled into K (at most the rows).
    audio_freq_tokens: int = 0
    # lla only (models/coattention.py): L cascaded co-attention modules, each cross-modal
    # attention then (coattention_self) self-attention per stream; heads divide the width.
    # Variants: cross only = (1, false); cross then self = (1, true); cascaded = (L > 1, true).
    coattention_layers: int = 2
    coattention_heads: int = 4
    coattention_self: bool = True
    # Encoders that keep time (stages stride in space / frequency only): video tokens per
    # frame, audio tokens per 4 spectrogram columns, instead of T/8 and n_columns/32. lla's
    # presets turn it on: with T/8, an 8-frame clip leaves one visual time step.
    keep_time: bool = False
    # The video stream also sees motion: each frame minus the one before it (zero for the
    # first), as 3 more input channels ("residual frames", Tao et al. 2020). The stem's
    # weights take 6 channels instead of 3.
    video_motion: bool = False
    # lla's sync head reads: "pooled" (the paper's: both streams averaged over all their
    # tokens, then compared), "per_time" (each visual time step against the audio of the
    # same seconds, scored per step and averaged: a comparison that keeps time) or
    # "per_time_attended" (the same, each time step's visual tokens weighted by the
    # audio-guided attention instead of averaged: where the sound seems to come from).
    sync_head: str = "pooled"

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "video_widths": Bound(4, MAX_WIDTH, integer=True),
        "video_blocks": Bound(1, MAX_BLOCKS, integer=True),
        "audio_widths": Bound(4, MAX_WIDTH, integer=True),
        "audio_blocks": Bound(1, MAX_BLOCKS, integer=True),
        "head_hidden": Bound(1, 16384, integer=True),
        "embed_dim": Bound(1, MAX_WIDTH, integer=True),
        "audio_freq_tokens": Bound(0, 1024, integer=True),
        "audio_freq_stride": Bound(4, 32, integer=True),  # and one of FREQ_STRIDES
        "coattention_layers": Bound(1, MAX_BLOCKS, integer=True),
        "coattention_heads": Bound(1, 64, integer=True),  # and divides the final width
    }
    FREQ_STRIDES: ClassVar[tuple[int, ...]] = (4, 8, 16, 32)

    def __post_init__(self) -> None:
        for name in ("video_widths", "video_blocks", "audio_widths", "audio_blocks"):
            setattr(self, name, _as_tuple(getattr(self, name), f"model.{name} (4 stages)", 4))
        _validate(self, "model", self.BOUNDS)
        _check(
            type(self.audio_freq_stride) is int and self.audio_freq_stride in self.FREQ_STRIDES,
            f"model.audio_freq_stride must be one of {', '.join(map(str, self.FREQ_STRIDES))}, "
            f"got {shown(self.audio_freq_stride)}",
        )
        _check(
            self.video_widths[-1] == self.audio_widths[-1],
            "model.video_widths and model.audio_widths need the same final width",
        )
        _check(
            self.sync_head in SYNC_HEADS,
            f"model.sync_head must be one of {', '.join(SYNC_HEADS)}, got {shown(self.sync_head)}",
        )
        _check(
            self.video_widths[-1] % self.coattention_heads == 0,
            f"model.coattention_heads {self.coattention_heads} must divide the final width "
            f"{self.video_widths[-1]}",
        )


@dataclass
class DataConfig:
    clip_frames: int = 8  # frames per clip (AVID: 8 frames at 16 fps = 0.5 s)
    crop_px: int = 112
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random resized crop: area fraction
    flip_p: float = 0.5
    # Where crops are resized to crop_px: "loader" (its workers, on uint8), "device" (the
    # training device: workers only cut the box out, less loader CPU per clip, BENCHMARKS.md;
    # cmac_core.data.resize), "auto" (device when training on CUDA, else loader).
    resize_on: str = "auto"
    color_jitter: float = 0.4  # brightness / contrast / saturation strength, 0 = off
    # Seconds of audio per clip, centred on the video clip: 0 = the video clip's own span
    # (clip_frames / fps: 0.5 s at 8 frames, 16 fps); AVID uses 2 s.
    audio_seconds: float = 0.0
    audio_offset_max_s: float = 0.0  # random audio shift augmentation, off by default
    spec_time_masks: int = 0  # SpecAugment-style masks, 0 = off
    spec_freq_masks: int = 0
    spec_mask_frac: float = 0.125  # longest mask as a fraction of the axis
    # Log-mel normalisation (x - mean) / std. None: from the shards' spectrogram preset
    # (augment.SPEC_NORMS), fixed when a run starts: its config and checkpoints hold the
    # numbers used and the preset (spec_preset), which embedding and localize then apply.
    spec_mean: float | None = None
    spec_std: float | None = None
    spec_preset: str = ""  # the preset the numbers are for; "" = not recorded (any preset)
    shuffle_buffer: int = 256
    # Clips drawn from each sample read, each at its own random offset. Above 1 a sample is
    # read and checked once for several clips (less loader CPU and storage per clip), at a
    # cost in batch diversity: the shuffle buffer then holds clips of about shuffle_buffer /
    # clips_per_sample samples, and a clip's batch holds on average about (batch - 1) *
    # (clips_per_sample - 1) / shuffle_buffer other clips of its own segment (0.36 at batch
    # 32, 4 clips, buffer 256), which the loss does not take as negatives (same video):
    # raise shuffle_buffer with it. An epoch still reads each sample once, so it has
    # clips_per_sample times the steps.
    clips_per_sample: int = 1
    # Seconds the training loader waits for a worker's next batch before the run stops with
    # one line (a hung worker, stalled storage); 0 = wait forever. Loader workers only.
    loader_timeout_s: float = 600.0
    # Synchronization pretext (lla): besides the aligned audio each clip gets the same
    # segment's audio shifted by at least sync_shift_min_s (at most sync_shift_max_s; 0 = as
    # far as the segment allows), inside the stored spectrogram. 0 = no shifted audio.
    sync_shift_min_s: float = 0.0
    sync_shift_max_s: float = 0.0

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "clip_frames": Bound(1, 1024, integer=True),
        "audio_seconds": Bound(0, 60),
        "crop_px": Bound(16, 4096, integer=True),
        "crop_scale": Bound(0, 1, open_lo=True),
        "flip_p": Bound(0, 1),
        "color_jitter": Bound(0, 1),  # factors in [1 - s, 1 + s]: never negative
        "audio_offset_max_s": Bound(0, 3600),
        "spec_time_masks": Bound(0, 64, integer=True),
        "spec_freq_masks": Bound(0, 64, integer=True),
        "spec_mask_frac": Bound(0, 1),
        "spec_mean": Bound(-1e4, 1e4),
        "spec_std": Bound(0, 1e4, open_lo=True),
        "shuffle_buffer": Bound(0, 1_000_000, integer=True),
        "clips_per_sample": Bound(1, 1024, integer=True),
        "loader_timeout_s": Bound(0, 86400),
        "sync_shift_min_s": Bound(0, 3600),
        "sync_shift_max_s": Bound(0, 3600),
    }

    def __post_init__(self) -> None:
        self.crop_scale = _as_tuple(self.crop_scale, "data.crop_scale", 2)
        unset = {n for n in ("spec_mean", "spec_std") if getattr(self, n) is None}
        _check(isinstance(self.spec_preset, str) and len(self.spec_preset) <= 64,
               f"data.spec_preset must be a preset name, got {shown(self.spec_preset)}")  # fmt: skip
        _validate(self, "data", {k: b for k, b in self.BOUNDS.items() if k not in unset})
        _check(len(unset) != 1, "data.spec_mean and data.spec_std: give both, or neither "
               "(None: from the shards' spectrogram preset)")  # fmt: skip
        _check(
            self.resize_on in RESIZE_ON,
            f"data.resize_on must be one of {', '.join(RESIZE_ON)}, got {shown(self.resize_on)}",
        )
        _check(
            self.crop_scale[0] <= self.crop_scale[1],
            f"data.crop_scale must be (smallest, largest), got {shown(self.crop_scale)}",
        )
        _check(
            self.sync_shift_max_s == 0 or self.sync_shift_max_s >= self.sync_shift_min_s,
            f"data.sync_shift_max_s {self.sync_shift_max_s:g} is below data.sync_shift_min_s "
            f"{self.sync_shift_min_s:g} (0: as far as the segment allows)",
        )


@dataclass
class LossConfig:
    method: str = "cmac"  # cmac | avid (the contrastive term alone: the baseline) | lla
    nce_temperature: float = 0.07
    within_modal_negatives: bool = True
    target_temperature: float = 0.1  # tau_b of the cross-modal attention targets
    lambda_video: float = 1.0
    lambda_audio: float = 1.0
    attention_warmup_steps: int = 100  # attention terms off before this step, then ramped in
    # lla: the part of the negatives that take another video's audio instead of the shifted
    # one, and (a curriculum, as in AVTS) all of them before sync_easy_steps.
    sync_other_video_frac: float = 0.0
    sync_easy_steps: int = 0
    # cmac: targets beta from a momentum copy of the model (0 = off, the paper's rule: from
    # the model itself); e.g. 0.99. cmac_core/targets.py, docs/method.md.
    target_momentum: float = 0.0

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "sync_other_video_frac": Bound(0, 1),
        "sync_easy_steps": Bound(0, 1e12, integer=True),
        "target_momentum": Bound(0, 0.9999),
        "nce_temperature": Bound(0, 100, open_lo=True),
        "target_temperature": Bound(0, 100, open_lo=True),
        "lambda_video": Bound(0, 1e4),
        "lambda_audio": Bound(0, 1e4),
        "attention_warmup_steps": Bound(0, 1e9, integer=True),
    }

    def __post_init__(self) -> None:
        _check(self.method in METHODS,
               f"loss.method must be one of {', '.join(METHODS)}, got {shown(self.method)}")  # fmt: skip
        _validate(self, "loss", self.BOUNDS)


@dataclass
class OptimConfig:
    lr: float = 2e-4  # AVID defaults: Adam(W), lr 2e-4, weight decay 1e-5
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    batch_size: int = 32  # per rank
    steps: int = 0  # 0: use epochs
    epochs: int = 1
    grad_clip: float = 1.0  # 0 = off
    save_every_steps: int = 500
    log_every_steps: int = 10
    workers: int = 4  # data loader processes per rank
    compile: bool = False
    # channels-last memory formats (the video encoder's 3-D convolutions channels_last_3d,
    # the audio encoder's 2-D ones channels_last); on CPU too when asked.
    channels_last: bool = False
    cudnn_benchmark: bool = True  # on CUDA: cuDNN picks its fastest kernels (shapes are fixed)
    # With more than one rank, cmac and avid normalise batches over the global batch
    # (SyncBatchNorm), as their negatives come from every rank; lla keeps per-rank statistics.
    sync_batchnorm: bool = True
    # A collective (and the ranks' heartbeat watchdog) waits this long for a rank before the
    # run stops naming it; longer than the slowest checkpoint save or torch.compile.
    collective_timeout_s: float = 300.0
    # Steps whose loss or gradient norm is not finite are skipped (no update); this many in a
    # row stop the run. Checked every log_every_steps and before each save (no sync per step).
    max_nonfinite_steps: int = 10
    seed: int = 0
    # Write each step's sample keys to keys/rank-R.jsonl in the run dir (what the run saw).
    record_keys: bool = False

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "lr": Bound(0, 10, open_lo=True),
        "weight_decay": Bound(0, 10),
        "warmup_steps": Bound(0, 1e9, integer=True),
        "batch_size": Bound(2, 65536, integer=True),  # >= 2: contrastive negatives
        "steps": Bound(0, 1e12, integer=True),  # 0: use epochs
        "epochs": Bound(1, 1e6, integer=True),
        "grad_clip": Bound(0, 1e6),
        "save_every_steps": Bound(1, 1e12, integer=True),
        "log_every_steps": Bound(1, 1e12, integer=True),
        "workers": Bound(0, 256, integer=True),
        "collective_timeout_s": Bound(1, 7 * 86400),
        "max_nonfinite_steps": Bound(1, 1e9, integer=True),
        "seed": Bound(0, 2**32 - 1, integer=True),
    }

    def __post_init__(self) -> None:
        _validate(self, "optim", self.BOUNDS)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    SECTIONS: ClassVar[dict[str, type]] = {
        "model": ModelConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig}  # fmt: skip

    def __post_init__(self) -> None:
        _check(
            self.loss.method != "lla" or self.data.sync_shift_min_s > 0,
            "loss.method lla needs data.sync_shift_min_s > 0 (its negatives are shifted audio): "
            "start from preset(name, method='lla')",
        )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        parts = cls.SECTIONS
        kwargs = {}
        for name, kind in parts.items():
            given = dict(data.get(name) or {})
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = set(given) - known
            _check(not unknown, f"unknown {name} settings: {sorted(unknown)}")
            kwargs[name] = kind(**given)
        unknown = set(data) - set(parts)
        _check(not unknown, f"unknown config sections: {sorted(unknown)}")
        return cls(**kwargs)

    def replace(self, section: str, **changes: Any) -> PretrainConfig:
        """A copy with some fields of one section changed (validated again)."""
        d = self.to_dict()
        d[section].update({k: v for k, v in changes.items() if v is not None})
        return PretrainConfig.from_dict(d)


def preset(name: str, *, method: str = "cmac") -> PretrainConfig:
    """``tiny`` (CPU tests, demo) or ``base`` (R(2+1)D-18 + ResNet-18 audio), for ``method``.

    ``lla`` changes the clip, the pretext and (tiny) the co-attention's size: 16 frames
    (1 s at 16 fps; tiny 8), negatives shifted by at least 0.5 s (``LLA_CHANGES``)."""
    d = _preset(name).to_dict()
    for section, values in (
        LLA_CHANGES[name] if method == "lla" else {"loss": {"method": method}}
    ).items():
        d[section].update(values)
    return PretrainConfig.from_dict(d)


# What --method lla changes in each preset.
LLA_CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "base": {"data": {"clip_frames": 16, "sync_shift_min_s": 0.5}, "model": {"keep_time": True},
             "loss": {"method": "lla"}},
    "tiny": {"data": {"clip_frames": 8, "sync_shift_min_s": 0.5},
             "model": {"coattention_layers": 1, "coattention_heads": 2, "keep_time": True},
             "loss": {"method": "lla"}},
}  # fmt: skip


def _preset(name: str) -> PretrainConfig:
    if name == "base":
        return PretrainConfig()
    if name == "tiny":
        return PretrainConfig(
            model=ModelConfig(
                video_widths=(8, 16, 32, 64),
                video_blocks=(1, 1, 1, 1),
                audio_widths=(8, 16, 32, 64),
                audio_blocks=(1, 1, 1, 1),
                head_hidden=64,
                embed_dim=32,
            ),
            data=DataConfig(clip_frames=4, crop_px=64, shuffle_buffer=32),
            loss=LossConfig(attention_warmup_steps=5),
            optim=OptimConfig(
                lr=1e-3,
                warmup_steps=5,
                batch_size=8,
                save_every_steps=20,
                workers=1,
                log_every_steps=1,
            ),  # fmt: skip
        )
    raise ConfigError(f"unknown config preset {name!r} (tiny, base, or a YAML or JSON file)")
