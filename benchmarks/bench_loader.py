"""cmac_core's training loader on schema v1 and v2 shards, against its bound, in one run.

    python benchmarks/bench_loader.py [--data DIR] [--json PATH] [--workers 1,2] [--repeats 3]

Inputs are made once and cached in ``--data``: ``--videos`` synthetic videos of
``--video-seconds`` at 640x360, 25 fps, H.264 + AAC (``avprep.synth.make_demo_video``:
a square moving over a gradient, with a tone), sharded with ``python -m avprep
shard VIDEOS --out SHARDS --quiet --shard-max-samples 8``: the defaults (16 fps,
short side 128, 10 s segments, logmel128, schema v2) with small shards, so every loader
worker has shards of its own; and the same shards rewritten as schema v1
(``avprep.read_sample.convert_shard``: the same JPEG bytes and spectrograms, a member
per frame).

For each loader worker count N, in one run, each side a torch DataLoader with N
worker processes, batches of ``--batch-size`` clips, the ``base`` DataConfig
(8 frames at 16 fps, 112 px crops, 0.5 s of audio):

- v1 loader: ``cmac_core.data.loader.train_stream`` on the v1 shards (each sample read
  whole by webdataset's tar stream, then SafeDecode -> ClipWindow -> shuffle ->
  DecodeFrames -> batched -> Augment), as the trainer iterates it;
- v2 loader: the same on the v2 shards: the seek reader (``cmac_core.data.seek``) reads
  tar headers, the json, and only the clip's frames and spectrogram columns;
- v2 loader, resize on device: the same with ``data.resize_on = device``: the workers cut
  each clip's crop out and leave the resize to the training device (not timed here);
- v1 reader, v2 reader: the same pipelines without Augment (the batch is the list of
  decoded clips): what reading costs, apart from cropping and batching;
- bound: the clips' work with no reading at all: each worker holds its shards' samples
  in memory (frames as JPEG bytes, spectrograms as arrays), and per clip draws a window,
  decodes its 8 JPEGs (simplejpeg, as the loader: read_sample.decode_jpegs) and copies
  its spectrogram columns;
- bound + Augment: the same, then the loader's own ``Augment`` stage makes the batch (crop,
  resize, flip, jitter factors, spectrogram tensors in shared memory): the loaders' bound;
- from source (AVID-style, ``--sides ...,source``): each clip decoded from its source
  mp4: decord opens the video resized to short side 128 and decodes the 8 frames at 16
  fps from a random offset; an ffmpeg process decodes the same 0.5 s of audio at 16 kHz
  mono; torchaudio makes the 128-bin log-mel; then the loader's own ``Augment``.

Each run skips ``--warmup-clips`` clips per worker (worker start-up, the shuffle
buffer filling, the bound loading its samples) and then times ``--clips`` clips per
worker (``--source-clips`` from source); throughput is the median over ``--repeats`` of
clips per wall second, also per worker. CPU is user + system seconds of the worker
processes (and their children: ffmpeg) and the main process per clip, read from /proc;
clips per loader core is clips per CPU second. MB read per clip is what the workers'
read calls returned (``rchar`` of /proc/PID/io: page cache or storage alike), and MB used
is the clip's frames' JPEG bytes plus its spectrogram columns' bytes. The ratios are
also given by CPU time, which other work on the machine skews less than wall time (the
load average is recorded). ``--sides v1,v2`` runs only some sides. The benchmark
measures; it never asserts.

Its parts, beside this script: ``loader_inputs.py`` (the videos and shards, made once),
``loader_sides.py`` (the reader-only, bound and from-source datasets),
``loader_measure.py`` (timing a side from /proc, the median over repeats) and
``loader_report.py`` (the machine and the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import webdataset as wds

# benchmarks/loader_*.py: the script's folder is on sys.path
from loader_inputs import SIZE, make_inputs, probe
from loader_measure import (
    bound_run,
    first_batch_run,
    loader_run,
    median_run,
    reader_run,
    source_run,
)
from loader_report import SIDES, machine, print_report

from cmac_core.config import DataConfig, preset
from cmac_core.data.shards import resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "avprep-bench-loader"
    )
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--workers", default="1,2", help="Comma-separated loader worker counts.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--video-seconds", type=float, default=20.0)
    ap.add_argument("--warmup-clips", type=int, default=256, help="Per worker, not timed.")
    ap.add_argument("--clips", type=int, default=512, help="Timed clips per worker.")
    ap.add_argument("--source-clips", type=int, default=64, help="The same, from source.")
    ap.add_argument("--sides", default="v1,v2,v2dev,v1read,v2read,bound,boundaug", help="Which sides to run "
                    f"({','.join(s for s, _ in SIDES)}).")  # fmt: skip
    ap.add_argument("--clips-per-sample", type=int, default=1, help="data.clips_per_sample.")
    ap.add_argument("--first-batch", type=int, default=0, help="Also time the first batch of a "
                    "fresh loader and of one resumed this many batches in (0: not).")  # fmt: skip
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    sides = [s for s, _ in SIDES if s in args.sides.split(",")]
    cfg = preset("base").data
    if args.clips_per_sample != 1:
        cfg = DataConfig(**{**cfg.__dict__, "clips_per_sample": args.clips_per_sample})

    on_device = dataclasses.replace(cfg, resize_on="device")
    video_dir, shard_dir, v1_dir = make_inputs(args.data, videos=args.videos,
                                               video_s=args.video_seconds)  # fmt: skip
    videos = [probe(p) for p in sorted(video_dir.glob("*.mp4"))] if "source" in sides else []
    tars, v1_tars = resolve(str(shard_dir)), resolve(str(v1_dir))
    res = {
        "machine": machine(),
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "clips_per_sample": cfg.clips_per_sample,
        "inputs": {
            "videos": args.videos,
            "video_seconds": args.video_seconds,
            "size": f"{SIZE[0]}x{SIZE[1]}",
            "shards": len(tars),
            "samples": sum(1 for _ in wds.tarfile_to_samples()({"url": u} for u in tars)),
            "shard_mb": sum(os.path.getsize(u) for u in tars) / 1e6,
            "v1_shard_mb": sum(os.path.getsize(u) for u in v1_tars) / 1e6,
            "clip_frames": cfg.clip_frames,
            "crop_px": cfg.crop_px,
        },
        "clips_timed_per_worker": {"source": args.source_clips, "others": args.clips},
    }
    n = {"warmup": args.warmup_clips, "clips": args.clips}
    n_source = {"warmup": args.batch_size, "clips": args.source_clips}
    bs = args.batch_size
    run = {
        "v1": lambda w, rep: loader_run(v1_dir, cfg, w, bs, rep, **n),
        "v2": lambda w, rep: loader_run(shard_dir, cfg, w, bs, rep, **n),
        "v2dev": lambda w, rep: loader_run(shard_dir, on_device, w, bs, rep, **n),
        "v1read": lambda w, rep: reader_run(v1_dir, cfg, w, bs, rep, **n),
        "v2read": lambda w, rep: reader_run(shard_dir, cfg, w, bs, rep, **n),
        "bound": lambda w, rep: bound_run(shard_dir, cfg, w, bs, rep, **n),
        "boundaug": lambda w, rep: bound_run(shard_dir, cfg, w, bs, rep, augment=True, **n),
        "source": lambda w, rep: source_run(videos, cfg, w, bs, rep, **n_source),
    }
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):  # interleaved, so drift hits every side alike
        for w in workers:
            print(f"run {rep + 1}/{args.repeats}, {w} workers", file=sys.stderr)
            for side in sides:
                runs.setdefault((side, w), []).append(run[side](w, rep))
    res["by_workers"] = []
    for w in workers:
        row = {"workers": w, **{side: median_run(runs[(side, w)], w) for side in sides}}
        if "v1" in row and "v2" in row:
            row["v2_vs_v1_by_cpu"] = row["v1"]["cpu_ms_per_clip"] / row["v2"]["cpu_ms_per_clip"]
        res["by_workers"].append(row)
    res["machine"]["loadavg_after"] = os.getloadavg()[0]
    print_report(res)
    if args.first_batch:
        res["first_batch"] = []
        for w in workers:
            for rep in range(args.repeats):
                r = first_batch_run(shard_dir, cfg, w, bs, rep, at=args.first_batch)
                res["first_batch"].append(r)
                print(f"first batch, {w} workers: fresh {r['fresh_s']:.2f} s, resumed "
                      f"{args.first_batch} batches in {r['resumed_s']:.2f} s "
                      f"(the same batch: {r['same_batch']})")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
