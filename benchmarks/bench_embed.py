"""Embedding throughput against the model's own forward time, in one run.

    python benchmarks/bench_embed.py [--config base|tiny] [--device auto] [--videos 8] [--json out.json]

1. Inputs: synthetic 20 s videos (cached under --data), sharded with the defaults
   except ``--shard-max-samples 2``, so every loader worker has shards of its own.
2. A checkpoint of the chosen config (weights as initialised: speed does not
   depend on training).
3. Bound, before and after the project's run: the same clips, already decoded
   into memory and packed into the same batches (``ClipPacker``, so the same
   shapes), through the model's forward alone, one warm-up batch excluded.
4. ``embed``: ``cmac_core.embed.embed`` as ``avprep embed`` runs it (checkpoint
   load and hash, loader workers, decode, forward, Parquet), clips/s. Two
   figures: end to end (from the call until the last part is written), and
   steady (from the end of the first forward to the end of the run: what a
   long job sees, without the one-off start-up: worker start, the first
   batch's backend warm-up). The timestamps come from a wrapper around
   ``Frozen.embed`` that only records the time.

Prints clips/s and the ratios bound/embed (the embedding overhead; goal <= 1.15x).
It measures; it never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_model  # benchmarks/common.py: the script's folder is on sys.path


def make_shards(data: Path, n_videos: int) -> Path:
    from avprep.synth import make_demo_video

    videos, shards = data / f"videos-{n_videos}", data / f"shards-{n_videos}"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        path = videos / f"v{i:03d}.mp4"
        if not path.exists():
            make_demo_video(path, duration_s=20, tone_hz=300 + 97 * i, size=(320, 240))
    if not list(shards.glob("*.tar")):
        cmd = [sys.executable, "-m", "avprep", "shard", str(videos), "--out", str(shards),
               "--shard-max-samples", "2", "--quiet"]  # fmt: skip
        subprocess.run(cmd, check=True)
    return shards


def forward_bound(frozen, batches, dev: torch.device) -> float:
    """Seconds for the forward of every batch (inputs already on the device)."""
    frozen.embed(*batches[0][:2])  # warm-up (backend tuning, allocator)
    sync(dev)
    t0 = time.perf_counter()
    for video, spec, _ in batches:
        frozen.embed(video, spec)
    sync(dev)
    return time.perf_counter() - t0


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "avprep-bench-embed"))
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from cmac_core import checkpoint
    from cmac_core import embed as embed_mod
    from cmac_core.config import preset
    from cmac_core.data.evaluation import eval_loader
    from cmac_core.data.shards import resolve
    from cmac_core.models import build

    data = Path(args.data)
    shards = make_shards(data, args.videos)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    cfg = preset(args.config)
    ckpt = data / f"{args.config}.pt"
    torch.manual_seed(0)
    checkpoint.save(ckpt, model=build("cmac", cfg.model), config=cfg.to_dict(), step=0, epoch=0)

    # the bound's inputs: every clip decoded into memory, packed as the run packs them
    frozen = embed_mod.Frozen.load(ckpt, dev)
    loader = eval_loader(resolve(str(shards)), frozen.cfg.data, clips_per_segment=None, workers=0)
    packer = embed_mod.ClipPacker(args.batch_size)
    batches = []
    for s in loader:
        for video, spec, real in [*packer.add(s["video"], s["spec"])]:
            batches.append((video.clone().to(dev), spec.clone().to(dev), real))
    batches += [(v.clone().to(dev), a.clone().to(dev), r) for v, a, r in packer.flush()]
    clips = sum(r for *_, r in batches)
    bound_s = [forward_bound(frozen, batches, dev)]
    del frozen

    # the project, end to end; Frozen.embed wrapped only to record when forwards end
    forward_ends: list[float] = []
    original = embed_mod.Frozen.embed

    def recorded(self, video, spec):
        out = original(self, video, spec)
        forward_ends.append(time.perf_counter())
        return out

    embed_mod.Frozen.embed = recorded
    out = data / "emb"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = embed_mod.embed(str(shards), ckpt, out, batch_size=args.batch_size, device=str(dev),
                             workers=args.workers)  # fmt: skip
    t1 = time.perf_counter()
    embed_mod.Frozen.embed = original
    assert report.clips == clips, (report.clips, clips)
    first_batch = batches[0][2]

    frozen = embed_mod.Frozen.load(ckpt, dev)
    bound_s.append(forward_bound(frozen, batches, dev))
    bound = clips / (sum(bound_s) / 2)
    e2e = clips / (t1 - t0)
    steady = (clips - first_batch) / (t1 - forward_ends[0])

    result = {
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": args.config,
        "segments": report.rows_written,
        "clips": clips,
        "batch_size": args.batch_size,
        "loader_workers": args.workers,
        "bound_s_before_after": [round(x, 3) for x in bound_s],
        "embed_s": round(t1 - t0, 3),
        "startup_s": round(forward_ends[0] - t0, 3),
        "forward_clips_per_s": round(bound, 2),
        "embed_clips_per_s_end_to_end": round(e2e, 2),
        "embed_clips_per_s_steady": round(steady, 2),
        "overhead_end_to_end_x": round(bound / e2e, 3),
        "overhead_steady_x": round(bound / steady, 3),
    }
    print(f"{'':34}{'clips/s':>10}")
    print(
        f"{'forward only (in memory)':34}{bound:>10.2f}   (before {bound_s[0]:.2f} s, after {bound_s[1]:.2f} s)"
    )
    print(
        f"{'avprep embed, steady':34}{steady:>10.2f}   overhead {bound / steady:.3f}x (goal <= 1.15x)"
    )
    print(
        f"{'avprep embed, end to end':34}{e2e:>10.2f}   overhead {bound / e2e:.3f}x "
        f"(start-up to the first forward's end: {forward_ends[0] - t0:.1f} s)"
    )
    print(f"on {result['device']} ({result['machine']}, {result['cores']} cores), config {args.config}, "
          f"{clips} clips, batch {args.batch_size}, {args.workers} loader workers")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
