"""What ``avprep evaluate`` runs: sizes, arms, seeds. Units in names; checked on creation.

Defaults were chosen by measurement on 2 shared CPU cores (docs/RESULTS.md): the
benchmark's own geometry (112 px frames, 40 px objects, a 7 x 7 grid at the 112 px
crop, where the tiny preset's 64 px crop would give 4 x 4 cells and an object of 1.4),
and 300 steps: on 2026-12-02 one tiny step of 16 clips took 0.46 s for avid and
0.9-1.9 s for the cmac arms (the longer ones beside other jobs), 1.0 s for lla; the 5
default arms x 2 seeds then fit the 45-minute budget on quiet cores (RESULTS.md's
timings). ``quick`` (CI, 5 minutes) keeps random init, avid and cmac, one seed, fewer
videos and steps: it runs every stage and measure, but its models are trained for a
minute.

The lla arm is known but left out of both defaults (``--arms ...,lla``): it adds about
5 minutes per seed to the full run and 1.5 minutes to ``quick``. ``sync_clips`` bounds
the synchronization 2AFC: about 0.35 s per clip and arm on those cores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cmac_core.config import ConfigError
from cmac_core.evaluate.arms import ARMS, FULL_ARMS, QUICK_ARMS

PRESETS = ("auto", "tiny", "base")
FULL = {"videos": 200, "test_videos": 100, "steps": 300, "seeds": 2}
QUICK = {"videos": 48, "test_videos": 32, "steps": 40, "seeds": 1}
_BOUNDS = {  # field -> (lowest, highest)
    "videos": (8, 100_000),
    "test_videos": (8, 100_000),
    "steps": (1, 10_000_000),
    "seeds": (1, 100),
    "batch_size": (2, 65536),
    "frame_px": (64, 512),  # before crop_px, which defaults to it
    "crop_px": (32, 1024),
    "object_px": (32, 256),
    "classes": (2, 8),
    "silent_classes": (0, 6),
    "workers": (1, 256),
    "bench_seed": (0, 2**32 - 1),
    "sync_clips": (1, 100_000),
}


_FLAGS = {"frame_px": "--size", "object_px": "--object-size"}  # where the CLI's name differs


@dataclass
class EvaluateConfig:
    """``None`` sizes take the mode's value (``FULL``, or ``QUICK`` with ``quick``)."""

    out_dir: str
    quick: bool = False
    preset: str = "auto"  # tiny | base | auto: base on a GPU, tiny elsewhere
    videos: int | None = None  # training videos of the benchmark
    test_videos: int | None = None  # test videos: retrieval ranks among all of them
    steps: int | None = None  # optimizer steps of every trained arm
    seeds: int | None = None  # seeds per arm (mean and spread)
    batch_size: int = 16
    frame_px: int = 112  # the benchmark's frames (avprep synth --size): a 7 x 7 grid of 16 px cells
    object_px: int = 40  # its objects (avprep synth --object-size)
    classes: int = 8  # its sounding classes (avprep synth --classes)
    silent_classes: int = 0  # its classes that never sound (avprep synth --silent-classes)
    crop_px: int | None = None  # None: frame_px, the whole frame
    arms: tuple[str, ...] = ()  # () = FULL_ARMS (QUICK_ARMS with quick)
    device: str = "auto"
    workers: int = 2  # synth processes (the shards have one writer: benchmark_shards)
    bench_seed: int = 0
    sync_clips: int = 32  # test clips of the synchronization 2AFC (the first, in shard order)

    def __post_init__(self) -> None:
        mode = QUICK if self.quick else FULL
        for name, value in mode.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.crop_px is None:
            self.crop_px = self.frame_px
        if not self.arms:
            self.arms = QUICK_ARMS if self.quick else FULL_ARMS
        self.arms = tuple(self.arms)
        known = [a.name for a in ARMS]
        for name in self.arms:
            if name not in known:
                raise ConfigError(f"unknown arm {name!r} (known: {', '.join(known)})")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}",
                              cli=f"--config must be one of {', '.join(PRESETS)}, got {self.preset!r}")  # fmt: skip
        for name, (lo, hi) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
                raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}",
                                  cli=f"{flag} must be an integer in {lo}..{hi}, got {value!r}")  # fmt: skip
        if self.frame_px % 16:
            raise ConfigError(f"frame_px must be a multiple of 16 (the grid), got {self.frame_px}",
                              cli=f"--size must be a multiple of 16 (the grid), got {self.frame_px}")  # fmt: skip
        if self.crop_px % 16:
            raise ConfigError(f"crop_px must be a multiple of 16 (the grid), got {self.crop_px}",
                              cli=f"--crop-px must be a multiple of 16 (the grid), got {self.crop_px}")  # fmt: skip
        if self.crop_px > self.frame_px:
            raise ConfigError(f"crop_px {self.crop_px} is larger than the frames ({self.frame_px} px)",
                              cli=f"--crop-px {self.crop_px} is larger than the frames (--size {self.frame_px})")  # fmt: skip
        if len(set(self.arms)) < len(self.arms):
            twice = sorted({a for a in self.arms if self.arms.count(a) > 1})
            raise ConfigError(f"arms named twice: {', '.join(twice)}",
                              cli=f"--arms names {', '.join(twice)} twice")  # fmt: skip
        if self.batch_size > self.videos:
            raise ConfigError(f"batch_size {self.batch_size} is more than videos {self.videos}",
                              cli=f"--batch-size {self.batch_size} is more than --videos {self.videos}")  # fmt: skip

    def preset_name(self, device_type: str) -> str:
        """The preset the arms train with: ``auto`` is base on a GPU, tiny elsewhere."""
        if self.preset != "auto":
            return self.preset
        return "base" if device_type == "cuda" else "tiny"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arms"] = list(self.arms)
        return d
