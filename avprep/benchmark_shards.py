"""The benchmark's shards for ``avprep evaluate``: synth, then shard each split, resumable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from avprep.benchmark import BenchmarkConfig, make_benchmark
from avprep.config import ShardConfig
from avprep.errors import UsageError
from avprep.pipeline import shard_videos


def benchmark_shards(out_dir: Path, *, videos: int, test_videos: int, seed: int, workers: int,
                     log: Callable[[str], None] = print) -> dict[str, Path]:  # fmt: skip
    """``avprep synth`` then ``avprep shard`` of each split under ``out_dir`` (``bench/``,
    ``shards/{train,test}``), each skipped when a previous run finished it (``.done``);
    their seconds go into ``timings.json``. Returns the shard folder of each split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    bench = out_dir / "bench"
    if not (bench / ".done").exists():
        log(f"evaluate: synth {videos} + {test_videos} videos")
        t0 = time.monotonic()
        make_benchmark(BenchmarkConfig(out_dir=str(bench), videos=videos, test_videos=test_videos,
                                       seed=seed, workers=workers))  # fmt: skip
        (bench / ".done").write_text("")
        timings["synth"] = round(time.monotonic() - t0, 1)
    shards = {}
    for split in ("train", "test"):
        shards[split] = out_dir / "shards" / split
        if (shards[split] / ".done").exists():
            continue
        log(f"evaluate: shard {split}")
        t0 = time.monotonic()
        scfg = ShardConfig(out_dir=str(shards[split]), fps=8.0, short_side_px=112, workers=workers,
                           shard_max_samples=25, quiet=True)  # fmt: skip
        report = shard_videos([str(bench / split / "manifest.jsonl")], scfg)
        if report.exit_code(strict=True) != 0:
            raise UsageError(
                f"avprep shard failed on some benchmark videos: see {shards[split]}/manifest"
            )
        (shards[split] / ".done").write_text("")
        timings[f"shard {split}"] = round(time.monotonic() - t0, 1)
    timings_path.write_text(json.dumps(timings, indent=1))
    return shards
