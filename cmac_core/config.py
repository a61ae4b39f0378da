"""Pretraining configuration: dataclasses with units in names, saved into the run dir.

``tiny`` is a width/depth-scaled model for CPU tests and the demo; ``base`` is
R(2+1)D-18 + ResNet-18 audio with the AVID clip setup (8 frames at 16 fps,
112 px crops, 128 log-mel bins).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("cmac", "avid")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names it."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    video_widths: tuple[int, ...] = (64, 128, 256, 512)
    video_blocks: tuple[int, ...] = (2, 2, 2, 2)
    audio_widths: tuple[int, ...] = (64, 128, 256, 512)
    audio_blocks: tuple[int, ...] = (2, 2, 2, 2)
    head_hidden: int = 512
    embed_dim: int = 128

    def __post_init__(self) -> None:
        self.video_widths, self.video_blocks = tuple(self.video_widths), tuple(self.video_blocks)
        self.audio_widths, self.audio_blocks = tuple(self.audio_widths), tuple(self.audio_blocks)
        for name in ("video", "audio"):
            w, b = getattr(self, f"{name}_widths"), getattr(self, f"{name}_blocks")
            _check(len(w) == 4 and len(b) == 4, f"{name}_widths and {name}_blocks need 4 stages")
            _check(min(w) >= 4 and min(b) >= 1, f"{name} widths >= 4 and blocks >= 1")
        _check(
            self.video_widths[-1] == self.audio_widths[-1],
            "video and audio need the same final width",
        )


@dataclass
class DataConfig:
    clip_frames: int = 8  # frames per clip (AVID: 8 frames at 16 fps = 0.5 s)
    crop_px: int = 112
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random resized crop: area fraction
    flip_p: float = 0.5
    color_jitter: float = 0.4  # brightness / contrast / saturation strength, 0 = off
    audio_offset_max_s: float = 0.0  # random audio shift augmentation, off by default
    spec_time_masks: int = 0  # SpecAugment-style masks, 0 = off
    spec_freq_masks: int = 0
    spec_mask_frac: float = 0.125  # longest mask as a fraction of the axis
    spec_mean: float = -6.0  # normalisation of log-mel values (logmel128 preset)
    spec_std: float = 5.0
    shuffle_buffer: int = 256

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)
        _check(self.clip_frames >= 1, "clip_frames >= 1")
        _check(self.crop_px >= 16, "crop_px >= 16")
        _check(
            0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "0 < crop_scale[0] <= crop_scale[1] <= 1",
        )
        _check(self.audio_offset_max_s >= 0, "audio_offset_max_s >= 0")
        _check(self.spec_std > 0, "spec_std > 0")


@dataclass
class LossConfig:
    method: str = "cmac"  # cmac | avid (the contrastive term alone: the baseline)
    nce_temperature: float = 0.07
    within_modal_negatives: bool = True
    target_temperature: float = 0.1  # tau_b of the cross-modal attention targets
    lambda_video: float = 1.0
    lambda_audio: float = 1.0
    attention_warmup_steps: int = 100  # attention terms off before this step, then ramped in

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"method must be one of {METHODS}")
        _check(self.nce_temperature > 0 and self.target_temperature > 0, "temperatures > 0")


@dataclass
class OptimConfig:
    lr: float = 2e-4  # AVID defaults: Adam(W), lr 2e-4, weight decay 1e-5
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    batch_size: int = 32  # per rank
    steps: int = 0  # 0: use epochs
    epochs: int = 1
    grad_clip: float = 1.0
    save_every_steps: int = 500
    log_every_steps: int = 10
    workers: int = 4  # data loader processes per rank
    compile: bool = False
    channels_last: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.lr) and self.lr > 0,
            f"--lr must be a finite number > 0, got {self.lr}",
        )
        _check(self.batch_size >= 2, "--batch-size must be >= 2 (contrastive negatives)")
        _check(self.steps >= 0 and self.epochs >= 1, "--steps >= 0 and --epochs >= 1")
        _check(self.save_every_steps >= 1, "--save-every must be >= 1")
        _check(self.workers >= 0, "--workers must be >= 0")


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        parts = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig}
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


def preset(name: str) -> PretrainConfig:
    """``tiny`` (CPU tests, demo) or ``base`` (R(2+1)D-18 + ResNet-18 audio)."""
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
    raise ConfigError(f"unknown config preset {name!r} (tiny, base, or a JSON file)")


def load(name_or_path: str) -> PretrainConfig:
    """A preset name or a JSON file (as saved into a run dir)."""
    if name_or_path in ("tiny", "base"):
        return preset(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"--config {name_or_path!r} is neither tiny, base nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not JSON ({e})") from e
    try:
        return PretrainConfig.from_dict(data)
    except ConfigError:
        raise
    except (AttributeError, TypeError, ValueError) as e:
        raise ConfigError(
            f"--config {path}: not a cmac_core config ({type(e).__name__}: {e}); "
            "see a run dir's config.json for the shape"
        ) from e
