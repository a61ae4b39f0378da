"""Embedding throughput against the model's own forward time, in one run.

    python benchmarks/bench_embed.py [--config base|tiny] [--device auto] [--videos 8] [--json out.json]

1. Inputs: synthetic 20 s videos (cached under --data), sharded with defaults.
2. A checkpoint of the chosen config (weights as initialised: speed does not
   depend on training).
3. ``embed``: ``cmac_core.embed.embed`` end to end (loader workers, decode,
   forward, Parquet), clips/s.
4. Bound: the same clips, already decoded into memory as the same batches, through
   the model's forward alone, clips/s.

Prints both and their ratio (the embedding overhead; goal <= 1.15x). It
measures; it never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_shards(data: Path, n_videos: int) -> Path:
    from avprep.synth import make_demo_video

    videos, shards = data / "videos", data / "shards"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        path = videos / f"v{i:03d}.mp4"
        if not path.exists():
            make_demo_video(path, duration_s=20, tone_hz=300 + 97 * i, size=(320, 240))
    if not list(shards.glob("*.tar")):
        subprocess.run([sys.executable, "-m", "avprep", "shard", str(videos), "--out", str(shards), "--quiet"],
                       check=True)  # fmt: skip
    return shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "avprep-bench-embed"))
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from cmac_core import checkpoint
    from cmac_core.config import preset
    from cmac_core.data.evaluation import eval_loader
    from cmac_core.data.shards import resolve
    from cmac_core.embed import Frozen, embed
    from cmac_core.models import build

    data = Path(args.data)
    shards = make_shards(data, args.videos)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    cfg = preset(args.config)
    ckpt = data / f"{args.config}.pt"
    torch.manual_seed(0)
    checkpoint.save(ckpt, model=build("cmac", cfg.model), config=cfg.to_dict(), step=0, epoch=0)

    # 3. the project, end to end (timed from the call to the last part written)
    out = data / "emb"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = embed(str(shards), ckpt, out, batch_size=args.batch_size, device=str(dev), workers=args.workers)
    embed_s = time.perf_counter() - t0
    clips = report.clips

    # 4. the bound: the same clips in memory, the same batches, forward only
    frozen = Frozen.load(ckpt, dev)
    loader = eval_loader(resolve(str(shards)), frozen.cfg.data, clips_per_segment=None, workers=0)
    videos, specs = [], []
    for s in loader:
        videos.append(s["video"])
        specs.append(s["spec"])
    video, spec = torch.cat(videos), torch.cat(specs)
    assert video.shape[0] == clips, (video.shape, clips)
    batches = [(video[i : i + args.batch_size].to(dev), spec[i : i + args.batch_size].to(dev))
               for i in range(0, clips, args.batch_size)]  # fmt: skip
    frozen.embed(*batches[0])  # warm-up (cudnn autotune, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for v, a in batches:
        frozen.embed(v, a)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    forward_s = time.perf_counter() - t0

    result = {
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "config": args.config,
        "segments": report.rows_written,
        "clips": clips,
        "batch_size": args.batch_size,
        "loader_workers": args.workers,
        "embed_s": round(embed_s, 3),
        "forward_s": round(forward_s, 3),
        "embed_clips_per_s": round(clips / embed_s, 2),
        "forward_clips_per_s": round(clips / forward_s, 2),
        "overhead_x": round(embed_s / forward_s, 3),
    }
    print(f"{'':28}{'clips/s':>10}{'seconds':>10}")
    print(f"{'forward only (in memory)':28}{result['forward_clips_per_s']:>10}{result['forward_s']:>10}")
    print(f"{'avprep embed (end to end)':28}{result['embed_clips_per_s']:>10}{result['embed_s']:>10}")
    print(f"overhead: {result['overhead_x']}x (goal <= 1.15x) on {result['device']}, "
          f"config {args.config}, {clips} clips, batch {args.batch_size}, {args.workers} loader workers")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
