"""``avprep synth``: the synthetic audio-visual benchmark, with known sound sources.

``make_benchmark(config)`` writes, under ``out_dir``::

    benchmark.json            the settings, the classes (shape, colour, pitch, timbre)
    train/manifest.jsonl      one row per video: path, id, label + ground truth (avprep/truth.py)
    train/videos/train-00000.mp4, ...
    test/manifest.jsonl, test/videos/test-00000.mp4, ...

Each video is H.264 + AAC in MP4: frames drawn by ``avprep/scene.py``, sound by
``avprep/soundtrack.py``. Video ``i`` of a split depends only on the settings,
the split and ``i`` (its own random generator), and ffmpeg runs with one thread
and bit-exact flags, so the same settings give byte-identical files. Train and
test are drawn from different generators and never share a video.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avprep import scene, soundtrack, truth
from avprep.errors import UsageError
from avprep.tools import ffmpeg_bin, require_ffmpeg, run

SPLITS = ("train", "test")
BATCH = 8  # videos per ffmpeg run (batches do not depend on --workers)
GRID_PX = 16  # the video encoders' stride: a frame of S px becomes an S/16 grid

FLAGS = {  # field -> CLI flag, whether an integer, lowest, highest
    "videos": ("--videos", True, 1, 100_000),
    "test_videos": ("--test-videos", True, 0, 100_000),
    "seed": ("--seed", True, 0, 2**32 - 1),
    "objects": ("--objects", True, 2, 3),
    "classes": ("--classes", True, 2, scene.MAX_CLASSES),
    "silent_classes": ("--silent-classes", True, 0, scene.MAX_CLASSES - 2),
    "noise": ("--noise", False, 0.0, 1.0),
    "silence": ("--silence", False, 0.0, 0.5),
    "duration_s": ("--seconds", False, 1.0, 60.0),
    "fps": ("--fps", False, 1.0, 30.0),
    "frame_size_px": ("--size", True, 64, 512),
    "object_size_px": ("--object-size", True, 2 * GRID_PX, 256),
    "sample_rate_hz": ("--sample-rate", True, 8000, 48000),
    "workers": ("--workers", True, 1, 64),
}


@dataclass
class BenchmarkConfig:
    """What ``avprep synth`` makes. Defaults: 4 s videos of 112 x 112 px at 8 fps (stored as
    they are by ``avprep shard --short-side 112 --fps 8``), two objects of 40 px from 8
    classes. At 112 px the encoders' grid is 7 x 7 cells of 16 px; a 40 px object spans
    2.5 cells and always covers at least one cell whole. Why 2 of 8 (measured,
    docs/RESULTS.md): with 3 objects of 4 classes another video holds the sounding class
    3 times in 4, so the audio's class tells a clip's video from the batch's others
    hardly at all and contrastive training stalled at ln 31; with 2 of 8 it is 1 in 4.

    ``silent_classes`` D > 0 makes another benchmark: the distractors are drawn from D more
    classes (the table's next D) that never sound, so sight alone can tell the sounding
    object (by its class, as a guitar from a chair) and a vision-only map or probe can be
    right; with 0 (the default) every class sounds in some video and only the audio says
    which object sounds in this one."""

    out_dir: str
    videos: int = 200  # training videos
    test_videos: int = 50
    seed: int = 0
    objects: int = 2  # per video: one sounds, the other(s) are distractors
    classes: int = 8  # K: classes drawn from (shape, colour, pitch, timbre)
    silent_classes: int = 0  # D: classes after the K that only ever appear as distractors
    noise: float = 0.1  # audio noise RMS of a strike's peak; pixel noise of 40 levels
    silence: float = 0.0  # the part of each video in one silent stretch
    duration_s: float = 4.0
    fps: float = 8.0
    frame_size_px: int = 112
    object_size_px: int = 40
    sample_rate_hz: int = 16000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        for name, (flag, integer, lo, hi) in FLAGS.items():
            value = getattr(self, name)
            kinds = int if integer else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise UsageError(
                    f"{flag} must be {'an integer' if integer else 'a number'}, got {value!r}"
                )
            if not (math.isfinite(value) and lo <= value <= hi):
                raise UsageError(f"{flag} must be in {lo}..{hi}, got {value}")
        if self.classes + self.silent_classes > scene.MAX_CLASSES:
            raise UsageError(f"--classes {self.classes} plus --silent-classes {self.silent_classes} is more than "
                             f"the {scene.MAX_CLASSES} classes there are")  # fmt: skip
        if self.silent_classes and self.silent_classes < self.objects - 1:
            raise UsageError(f"--silent-classes ({self.silent_classes}) must be at least --objects - 1 "
                             f"({self.objects - 1}): the distractors in a video have different classes")  # fmt: skip
        if not self.silent_classes and self.classes < self.objects:
            raise UsageError(f"--classes ({self.classes}) must be at least --objects ({self.objects}): "
                             "the objects in a video have different classes")  # fmt: skip
        if self.frame_size_px % GRID_PX:
            raise UsageError(f"--size must be a multiple of {GRID_PX} (the encoders' grid), got {self.frame_size_px}")  # fmt: skip
        if self.objects * self.object_size_px**2 > self.frame_size_px**2 / 2:
            raise UsageError(f"--objects {self.objects} of --object-size {self.object_size_px} cover more than "
                             f"half of a {self.frame_size_px} px frame: they could not move")  # fmt: skip
        if round(self.duration_s * self.fps) < 2:
            raise UsageError("--seconds x --fps must give at least 2 frames")

    @property
    def n_frames(self) -> int:
        return round(self.duration_s * self.fps)

    def content_dict(self) -> dict[str, Any]:
        """The settings that decide the files (all but where and how many workers)."""
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("out_dir", "workers")
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def content_of(cls, made: dict[str, Any]) -> dict[str, Any]:
        """``content_dict`` of a ``benchmark.json``'s config; a setting it lacks (written
        before the setting existed) holds its default."""
        return cls.from_dict({**made, "out_dir": "", "workers": 1}).content_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown benchmark settings: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class SynthReport:
    out_dir: Path
    manifests: dict[str, Path]  # split -> manifest.jsonl
    videos: dict[str, int]  # split -> count
    seconds: float


def classes_table(k: int, silent: int = 0) -> list[dict[str, Any]]:
    """The first ``k`` classes (index, label, shape, colour, pitch and timbre), then the
    ``silent`` ones that only appear as distractors (pitch and timbre None)."""
    return [
        {"class_index": i, "label": name, "shape": name.split("_")[1], "rgb": list(rgb),
         "pitch_hz": soundtrack.PITCH_HZ[i] if i < k else None,
         "timbre": i % len(soundtrack.TIMBRES) if i < k else None}
        for i, (name, rgb) in enumerate(scene.CLASSES[: k + silent])
    ]  # fmt: skip


def _sounding_classes(cfg: BenchmarkConfig, split: int, n: int) -> np.ndarray:
    """The sounding class of each video of a split: every class equally often, shuffled."""
    labels = np.arange(n) % cfg.classes
    np.random.default_rng([cfg.seed, split, 0xC1A55]).shuffle(labels)
    return labels


def make_video(cfg: BenchmarkConfig, split: int, index: int, sounding: int) -> Video:
    """Video ``index`` of split ``SPLITS[split]`` (class ``sounding`` sounds), not yet encoded."""
    rng = np.random.default_rng([cfg.seed, split, index])
    if cfg.silent_classes:  # distractors of classes that never sound
        others = list(range(cfg.classes, cfg.classes + cfg.silent_classes))
    else:
        others = [c for c in range(cfg.classes) if c != sounding]
    distractors = [int(c) for c in rng.choice(others, cfg.objects - 1, replace=False)]
    order = [sounding, *distractors]
    rng.shuffle(order)  # draw order and placement order carry no cue
    sc = scene.Scene.simulate(
        rng,
        order,
        frame_size_px=cfg.frame_size_px,
        object_size_px=cfg.object_size_px,
        fps=cfg.fps,
        n_frames=cfg.n_frames,
    )
    me = order.index(sounding)
    silences = []
    if cfg.silence > 0:
        length = cfg.silence * cfg.duration_s
        start = float(rng.uniform(0.0, cfg.duration_s - length))
        silences = [[round(start, 5), round(start + length, 5)]]
    onsets = soundtrack.heard(sc.tracks[me].wall_bounces_s, silences)
    frames = sc.render(rng, noise=cfg.noise)
    audio = soundtrack.soundtrack(
        rng,
        sounding,
        onsets_s=onsets,
        silences_s=silences,
        duration_s=cfg.n_frames / cfg.fps,
        sample_rate_hz=cfg.sample_rate_hz,
        noise=cfg.noise,
    )
    name = f"{SPLITS[split]}-{index:05d}"
    extra = {
        "synth": truth.TRUTH_VERSION, "split": SPLITS[split], "index": index, "seed": cfg.seed,
        "class_index": sounding, "n_classes": cfg.classes,
        "box_times_s": [round(t, 6) for t in sc.frame_times_s], "boxes": sc.boxes(me),
        "onsets_s": onsets, "silences_s": silences,
        "distractors": [{"label": scene.CLASSES[c][0], "class_index": c, "boxes": sc.boxes(i)}
                        for i, c in enumerate(order) if i != me],
    }  # fmt: skip
    row = {"path": f"videos/{name}.mp4", "id": name, "label": scene.CLASSES[sounding][0], **extra}
    return Video(row, frames, audio)


@dataclass
class Video:
    """One benchmark video before encoding: its manifest row (path relative to the split's
    folder), RGB frames uint8 ``[n, H, W, 3]`` and mono float32 samples."""

    row: dict[str, Any]
    frames: np.ndarray
    audio: np.ndarray


def encode(folder: Path, videos: list[Video], *, fps: float, sample_rate_hz: int) -> None:
    """Encode ``videos`` as H.264/AAC MP4 files at ``folder / row["path"]`` with one ffmpeg
    (its start costs more than encoding one small video). Each file is byte-identical for
    the same frames and samples, whatever else the call encodes (one thread, bit-exact
    flags, no metadata), and is written under a temporary name and renamed."""
    cmd = [ffmpeg_bin(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    outputs = []
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=folder) as tmp:
        for i, v in enumerate(videos):
            n, h, w, _ = v.frames.shape
            raw, wav = Path(tmp) / f"{i}.rgb", Path(tmp) / f"{i}.wav"
            raw.write_bytes(np.ascontiguousarray(v.frames).tobytes())
            with wave.open(str(wav), "wb") as f:
                f.setnchannels(1)
                f.setsampwidth(2)
                f.setframerate(sample_rate_hz)
                f.writeframes((np.clip(v.audio, -1, 1) * 32767).round().astype("<i2").tobytes())
            cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", f"{fps:g}", "-i", str(raw),
                    "-i", str(wav)]  # fmt: skip
        for i, v in enumerate(videos):
            path = folder / v.row["path"]
            tmp_out = path.with_name(f".{path.name}.tmp")
            outputs.append((tmp_out, path))
            cmd += ["-map", f"{2 * i}:v:0", "-map", f"{2 * i + 1}:a:0",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                    "-g", str(len(v.frames)), "-threads", "1", "-c:a", "aac", "-b:a", "64k",
                    "-map_metadata", "-1", "-fflags", "+bitexact", "-flags", "+bitexact",
                    "-f", "mp4", str(tmp_out)]  # fmt: skip
        proc = run(cmd, capture_output=True)
    if proc.returncode != 0:
        for tmp_out, _ in outputs:
            tmp_out.unlink(missing_ok=True)
        why = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise UsageError(f"ffmpeg could not encode {outputs[0][1]}: {why}")
    for tmp_out, path in outputs:
        os.replace(tmp_out, path)


def _prepare(cfg: BenchmarkConfig, out: Path) -> None:
    """``out`` must be new, empty, or a benchmark made with the same settings (remade)."""
    settings = out / "benchmark.json"
    if settings.exists():
        try:
            old = json.loads(settings.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{settings} is not readable as a benchmark description: {e}") from e
        try:
            same = BenchmarkConfig.content_of(old) == cfg.content_dict()
        except (UsageError, TypeError):
            same = False
        if not same:
            raise UsageError(
                f"{out} holds a benchmark made with other settings; choose another folder"
            )
    elif out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; choose a new folder")
    on_the_way = next((p for p in out.parents if p.exists()), None)
    if on_the_way is not None and not on_the_way.is_dir():
        raise UsageError(f"cannot write to {out}: {on_the_way} is a file")
    for name in SPLITS:
        (out / name / "videos").mkdir(parents=True, exist_ok=True)
        for left in (out / name).glob(".synth-*"):  # raw frames of a run that was killed
            shutil.rmtree(left, ignore_errors=True)
        for left in (out / name / "videos").glob(".*.tmp"):
            left.unlink(missing_ok=True)
    description = {
        "config": cfg.to_dict(),
        "classes": classes_table(cfg.classes, cfg.silent_classes),
        "truth_version": truth.TRUTH_VERSION,
        "manifests": {name: f"{name}/manifest.jsonl" for name in SPLITS},
        "shard_with": f"avprep shard OUT/train/manifest.jsonl --short-side {cfg.frame_size_px} --fps {cfg.fps:g}",
    }
    settings.write_text(json.dumps(description, indent=1) + "\n")


def make_benchmark(cfg: BenchmarkConfig, *, on_videos=None) -> SynthReport:
    """Write the benchmark ``cfg`` describes (see the module docstring); ``on_videos(split,
    n)`` is called after each batch of ``n`` videos. The manifests are written last. Made
    again with the same settings (after a kill, say), the videos already there are kept."""
    require_ffmpeg()
    started = time.monotonic()
    out = Path(cfg.out_dir)
    _prepare(cfg, out)
    counts = {"train": cfg.videos, "test": cfg.test_videos}
    manifests, videos = {}, {}
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for split, name in enumerate(SPLITS):
            labels = _sounding_classes(cfg, split, counts[name])
            folder = out / name

            def batch(
                first: int, split=split, name=name, labels=labels, folder=folder
            ) -> list[dict]:
                last = min(first + BATCH, len(labels))
                videos = [make_video(cfg, split, i, int(labels[i])) for i in range(first, last)]
                # A file there is whole (renamed into place) and, the settings the same, the same.
                todo = [v for v in videos if not (folder / v.row["path"]).exists()]
                if todo:
                    encode(folder, todo, fps=cfg.fps, sample_rate_hz=cfg.sample_rate_hz)
                if on_videos is not None:
                    on_videos(name, last - first)
                return [v.row for v in videos]

            rows = [r for part in pool.map(batch, range(0, counts[name], BATCH)) for r in part]
            manifest = folder / "manifest.jsonl"
            tmp = manifest.with_name(".manifest.jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
            os.replace(tmp, manifest)
            manifests[name], videos[name] = manifest, len(rows)
    return SynthReport(out, manifests, videos, time.monotonic() - started)
