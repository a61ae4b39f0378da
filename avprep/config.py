"""Configuration of ``avprep shard``: one dataclass, units in field names."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from avprep import schema
from avprep.errors import UsageError
from avprep.spectrogram import PRESETS, unusable

SPEC_PRESETS = tuple(PRESETS)
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: beyond it a timer overflows, and no file needs it


@dataclass
class ShardConfig:
    """What ``avprep shard`` stores and how it splits the work.

    Defaults follow the conventions of the audio-visual SSL literature:
    16 fps and a 128 px short side (AVID/CMAC resize to 128 and crop 112),
    10 s segments (the length of AudioSet and VGGSound clips), 16 kHz mono audio
    and a 128-bin log-mel with a 25 ms window and 10 ms hop (AST / Kaldi fbank).
    """

    out_dir: str
    fps: float = 16.0
    short_side_px: int = 128
    segment_seconds: float = 10.0
    min_seconds: float = 1.0
    sample_rate_hz: int = 16000
    spec_preset: str = "logmel128"
    keep_audio: bool = False
    jpeg_quality: int = 90
    shard_max_samples: int = 1000
    shard_max_bytes: int = 256 * 1024**2
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    rank: int = 0
    world_size: int = 1
    timeout_seconds: float = 120.0
    strict: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.fps > 0, f"--fps must be > 0, got {self.fps}"),
            (self.short_side_px >= 16, f"--short-side must be >= 16, got {self.short_side_px}"),
            (
                self.segment_seconds > 0,
                f"--segment-seconds must be > 0, got {self.segment_seconds}",
            ),
            (self.min_seconds > 0, f"--min-seconds must be > 0, got {self.min_seconds}"),
            (
                self.min_seconds <= self.segment_seconds,
                f"--min-seconds ({self.min_seconds}) must not exceed --segment-seconds "
                f"({self.segment_seconds})",
            ),
            (
                self.fps * self.segment_seconds <= schema.MAX_FRAMES,
                f"--fps x --segment-seconds must be <= {schema.MAX_FRAMES} frames per sample",
            ),
            (8000 <= self.sample_rate_hz <= 192000, "--sample-rate must be in 8000..192000"),
            (self.spec_preset in SPEC_PRESETS, f"--spec-preset must be one of {SPEC_PRESETS}"),
            (1 <= self.jpeg_quality <= 100, "--jpeg-quality must be in 1..100"),
            (self.shard_max_samples >= 1, "--shard-max-samples must be >= 1"),
            (self.shard_max_bytes >= 1024**2, "--shard-max-bytes must be >= 1 MiB"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.world_size >= 1, f"--world-size must be >= 1, got {self.world_size}"),
            (
                0 <= self.rank < self.world_size,
                f"--rank must be in 0..{self.world_size - 1}, got {self.rank}",
            ),
            (
                0 < self.timeout_seconds <= MAX_TIMEOUT_S,
                f"--timeout must be in (0, {MAX_TIMEOUT_S}] seconds, got {self.timeout_seconds}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        preset = PRESETS[self.spec_preset]
        why = unusable(preset, self.sample_rate_hz)
        if why:
            raise UsageError(
                f"--spec-preset {self.spec_preset} at --sample-rate {self.sample_rate_hz}: {why}; "
                "use a higher --sample-rate"
            )
        if self.min_seconds < preset.win_s:
            raise UsageError(
                f"--min-seconds must be at least the spectrogram window ({preset.win_s} s): "
                "a shorter segment has no spectrogram column"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def content_dict(self) -> dict[str, Any]:
        """The settings that decide what a sample holds (resume must not mix them)."""
        keys = (
            "fps",
            "short_side_px",
            "segment_seconds",
            "min_seconds",
            "sample_rate_hz",
            "spec_preset",
            "keep_audio",
            "jpeg_quality",
        )
        return {k: getattr(self, k) for k in keys}
