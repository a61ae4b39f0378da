"""bench_loader's inputs: synthetic videos, their v2 shards and the same shards as v1,
made once and cached; and the AVID-style index of the videos (``probe``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO  # benchmarks/common.py: the script's folder is on sys.path

from avprep import schema
from avprep.read_sample import convert_shard

SIZE = (640, 360)
SHARD_SAMPLES = 8
COLORS = ("orange", "blue", "red", "yellow", "green", "white", "cyan", "magenta")


def make_inputs(data: Path, *, videos: int, video_s: float) -> tuple[Path, Path, Path]:
    """(folder of the videos, of their v2 shards, of the same shards as v1), made once."""
    from avprep.synth import make_demo_video  # noqa: PLC0415

    w, h = SIZE
    video_dir = data / f"videos-{videos}x{video_s:g}s-{w}x{h}"
    shard_dir = data / f"shards-{videos}x{video_s:g}s-{w}x{h}-v{schema.SCHEMA_VERSION}"
    v1_dir = data / f"shards-{videos}x{video_s:g}s-{w}x{h}-v{schema.SCHEMA_VERSION}-as-v1"
    video_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(videos):
        path = video_dir / f"video{i:02d}.mp4"
        if not path.exists():
            part = video_dir / f".part-{path.name}"
            make_demo_video(part, duration_s=video_s, size=SIZE, tone_hz=220 + 110 * i,
                            color=COLORS[i % len(COLORS)])  # fmt: skip
            part.replace(path)
    if not list(shard_dir.glob("*.tar")):
        tmp = data / f".part-{shard_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shard_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "avprep", "shard", str(video_dir), "--out", str(tmp),
               "--shard-max-samples", str(SHARD_SAMPLES), "--quiet"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True)
        tmp.replace(shard_dir)
        shutil.rmtree(v1_dir, ignore_errors=True)
    if not list(v1_dir.glob("*.tar")):
        tmp = data / f".part-{v1_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for tar in sorted(shard_dir.glob("*.tar")):
            convert_shard(tar, tmp / tar.name, version=1)
        tmp.replace(v1_dir)
    took = time.perf_counter() - t0
    if took > 1:
        print(f"made inputs in {data} ({took:.0f} s)", file=sys.stderr)
    return video_dir, shard_dir, v1_dir


def probe(path: Path) -> dict:
    """Width, height, frame rate and duration of the video stream (an AVID-style index)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height,avg_frame_rate,duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    s = json.loads(out)["streams"][0]
    num, den = s["avg_frame_rate"].split("/")
    return {"path": str(path), "width": int(s["width"]), "height": int(s["height"]),
            "fps": int(num) / int(den), "duration_s": float(s["duration"])}  # fmt: skip
