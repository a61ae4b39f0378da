"""Configuration of ``avprep shard``: one dataclass, units in field names."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Any

from avprep import schema
from avprep.errors import UsageError
from avprep.media.decoder import DECODERS
from avprep.spectrogram import PRESETS, unusable
from avprep.urls import out_refusal

SPEC_PRESETS = tuple(PRESETS)
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: beyond it a timer overflows, and no file needs it
# Upper bounds: past them a value is a typo, and would exhaust memory or processes.
MAX_FPS = 1000.0  # above any camera's stored frame rate but high-speed ones
MAX_SHORT_SIDE_PX = 4096  # 4K: a segment of frames at this size already takes gigabytes
MAX_SEGMENT_S = 600.0  # a segment's audio is held whole: 10 min at 192 kHz is 460 MB
MAX_SHARD_SAMPLES = 1_000_000
MAX_SHARD_BYTES = 64 * 1024**3
MAX_WORKERS = 1024  # each a process of ~170 MB
MAX_WORLD_SIZE = 1_000_000  # ranks are int32 in the manifest

_NUMBERS = {  # field -> CLI flag, whether an integer
    "fps": ("--fps", False),
    "short_side_px": ("--short-side", True),
    "segment_seconds": ("--segment-seconds", False),
    "min_seconds": ("--min-seconds", False),
    "sample_rate_hz": ("--sample-rate", True),
    "jpeg_quality": ("--jpeg-quality", True),
    "shard_max_samples": ("--shard-max-samples", True),
    "shard_max_bytes": ("--shard-max-bytes", True),
    "workers": ("--workers", True),
    "rank": ("--rank", True),
    "world_size": ("--world-size", True),
    "timeout_seconds": ("--timeout", False),
}


def available_cpus() -> int:
    """The CPUs this process may run on (Slurm's and taskset's allocation), not the
    machine's core count; the core count where the affinity mask is not available."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


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
    workers: int = field(default_factory=lambda: available_cpus())
    rank: int = 0
    world_size: int = 1
    timeout_seconds: float = 120.0
    decoder: str = "auto"
    strict: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        self.out_dir = str(self.out_dir)
        if out_refusal(self.out_dir) is not None:  # a URL of a read-only protocol (http)
            raise UsageError(out_refusal(self.out_dir))
        for name, (flag, integer) in _NUMBERS.items():
            value = getattr(self, name)
            kinds = int if integer else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool):
                kind = "an integer" if integer else "a number"
                raise UsageError(f"{flag} must be {kind}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
        checks = [
            (0 < self.fps <= MAX_FPS, f"--fps must be in (0, {MAX_FPS:g}], got {self.fps}"),
            (
                16 <= self.short_side_px <= MAX_SHORT_SIDE_PX,
                f"--short-side must be in 16..{MAX_SHORT_SIDE_PX}, got {self.short_side_px}",
            ),
            (
                0 < self.segment_seconds <= MAX_SEGMENT_S,
                f"--segment-seconds must be in (0, {MAX_SEGMENT_S:g}], got {self.segment_seconds}",
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
            (
                self.decoder in DECODERS,
                f"--decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}",
            ),
            (1 <= self.jpeg_quality <= 100, "--jpeg-quality must be in 1..100"),
            (
                1 <= self.shard_max_samples <= MAX_SHARD_SAMPLES,
                f"--shard-max-samples must be in 1..{MAX_SHARD_SAMPLES}",
            ),
            (
                1024**2 <= self.shard_max_bytes <= MAX_SHARD_BYTES,
                f"--shard-max-bytes must be in 1 MiB..64 GiB ({MAX_SHARD_BYTES})",
            ),
            (
                1 <= self.workers <= MAX_WORKERS,
                f"--workers must be in 1..{MAX_WORKERS}, got {self.workers}",
            ),
            (
                1 <= self.world_size <= MAX_WORLD_SIZE,
                f"--world-size must be in 1..{MAX_WORLD_SIZE}, got {self.world_size}",
            ),
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
        if self.decoder == "decord" and importlib.util.find_spec("decord") is None:
            raise UsageError("--decoder decord needs decord: pip install 'avprep[decord]'")
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
