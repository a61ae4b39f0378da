"""bench_shard's input videos, made with ffmpeg once and cached: clips of a
given length and size whose picture changes every frame, a long video of the
same kind for the memory check, and the clips remuxed to MPEG-TS."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SIZE = (640, 360)
FPS = 25
GRAIN = 12  # noise strength: ~1.1 Mbit/s at CRF 23 for this picture


def make_video(path: Path, *, duration_s: float, seed: int, size: tuple[int, int] = SIZE) -> Path:
    """A 25 fps H.264 + AAC video of ``size`` with motion and grain in every frame."""
    if path.exists():
        return path
    w, h = size
    video = (
        f"testsrc2=s={w}x{h}:r={FPS}:d={duration_s},format=yuv420p,"
        f"noise=alls={GRAIN}:allf=t+u:all_seed={seed}"
    )
    audio = f"anoisesrc=c=pink:r=44100:a=0.05:d={duration_s}:seed={seed}"
    tmp = path.with_name(f".part-{path.name}")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio,
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(5 * FPS),
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-b:a", "128k",
           "-shortest", "-f", "mp4", str(tmp)]  # fmt: skip
    subprocess.run(cmd, check=True)
    tmp.replace(path)
    return path


def make_inputs(
    data: Path, *, clips: int, clip_s: float, long_s: float, size: tuple[int, int] = SIZE
) -> tuple[Path, Path]:
    """(folder of the clips, folder of the long video), made once and reused."""
    tag = "" if size == SIZE else f"-{size[0]}x{size[1]}"
    clip_dir = data / f"clips-{clips}x{clip_s:g}s{tag}"
    long_dir = data / f"long-{long_s:g}s{tag}"
    clip_dir.mkdir(parents=True, exist_ok=True)
    long_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(clips):
        make_video(clip_dir / f"clip{i:02d}.mp4", duration_s=clip_s, seed=i + 1, size=size)
    make_video(long_dir / "long.mp4", duration_s=long_s, seed=1000, size=size)
    took = time.perf_counter() - t0
    if took > 1:
        print(f"made inputs in {data} ({took:.0f} s)", file=sys.stderr)
    return clip_dir, long_dir


def make_tiny(data: Path, n: int, size: tuple[int, int] = SIZE) -> Path:
    """``n`` clips of 1 s: an ``avprep shard`` run that is almost all start-up and end."""
    out = data / f"tiny-{n}x1s-{size[0]}x{size[1]}"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(out / f"tiny{i:02d}.mp4", duration_s=1.0, seed=i + 1, size=size)
    return out


def copy_inputs(data: Path, files: list[Path], copies: int) -> Path:
    """A folder of ``copies`` copies of each of ``files`` (real clips: too few and too
    short alone to time a run), made once; copies, not links, so that each is an input."""
    out = data / f"given-{len(files)}x{copies}"
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        for i in range(copies):
            dst = out / f"{f.stem}-{i:02d}{f.suffix}"
            if not dst.exists():
                dst.write_bytes(f.read_bytes())
    return out


def remux_ts(clip_dir: Path) -> Path:
    """The clips stream-copied into MPEG-TS, which avprep decodes with its ffmpeg pipe
    (decord has no exact frame index there): the same pictures through the other decoder."""
    ts_dir = clip_dir.with_name(clip_dir.name + "-ts")
    ts_dir.mkdir(exist_ok=True)
    for clip in sorted(clip_dir.glob("*.mp4")):
        out = ts_dir / f"{clip.stem}.ts"
        if not out.exists():
            tmp = out.with_name(f".part-{out.name}")
            cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(clip), "-c", "copy",
                   "-f", "mpegts", str(tmp)]  # fmt: skip
            subprocess.run(cmd, check=True)
            tmp.replace(out)
    return ts_dir


def duration_s(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0",
         "-show_entries", "stream=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(out.split()[0])  # MPEG-TS lists the stream again under its program


def bit_rate(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=bit_rate", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(out.strip())
