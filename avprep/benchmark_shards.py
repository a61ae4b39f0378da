"""The benchmark's shards for ``avprep evaluate``: synth, then shard each split, resumable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from avprep.benchmark import FLAGS, BenchmarkConfig, make_benchmark
from avprep.config import ShardConfig
from avprep.errors import UsageError
from avprep.pipeline import shard_videos
from avprep.stage_timings import StageTimings


def bench_config(out_dir: Path, *, videos: int, test_videos: int, seed: int, workers: int,
                 frame_px: int = 112, object_px: int = 40, classes: int = 8,
                 silent_classes: int = 0) -> BenchmarkConfig:  # fmt: skip
    """The benchmark ``out_dir/bench`` is to hold. Writes nothing; a finished benchmark made
    with other settings is refused in one line (the runs and features beside it belong to it)."""
    bench = out_dir / "bench"
    cfg = BenchmarkConfig(out_dir=str(bench), videos=videos, test_videos=test_videos, seed=seed,
                          workers=workers, frame_size_px=frame_px, object_size_px=object_px,
                          classes=classes, silent_classes=silent_classes)  # fmt: skip
    if (bench / ".done").exists():
        _same_benchmark(bench, cfg)
    return cfg


def benchmark_shards(out_dir: Path, cfg: BenchmarkConfig, *,
                     log: Callable[[str], None] = print) -> dict[str, Path]:  # fmt: skip
    """``avprep synth`` of ``cfg`` (from ``bench_config``, which checked it against a
    finished benchmark) then ``avprep shard`` of each split (one writer, in the manifest's
    order) under ``out_dir`` (``bench/``, ``shards/{train,test}``), each skipped when a
    previous run finished it (``.done``); their seconds go into ``timings.json``
    (``StageTimings``). Returns the shard folder of each split."""
    bench = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = StageTimings(out_dir / "timings.json")
    if not (bench / ".done").exists():
        log(f"evaluate: synth {cfg.videos} + {cfg.test_videos} videos")
        with timings.timed("synth"):
            make_benchmark(cfg)
            (bench / ".done").write_text("")
    shards = {}
    for split in ("train", "test"):
        shards[split] = out_dir / "shards" / split
        if (shards[split] / ".done").exists():
            continue
        log(f"evaluate: shard {split}")
        # One shard writer: with several, which worker takes which video is a race, so the
        # shards' contents (and with them the training stream's order and the first clips the
        # sync 2AFC takes) changed from run to run; one writer keeps the manifest's order, and
        # the same seed gives byte-identical shards (2.5 s more for 200 videos).
        scfg = ShardConfig(out_dir=str(shards[split]), fps=cfg.fps, short_side_px=cfg.frame_size_px, workers=1,
                           shard_max_samples=25, quiet=True)  # fmt: skip
        with timings.timed(f"shard {split}"):
            report = shard_videos([str(bench / split / "manifest.jsonl")], scfg)
            if report.exit_code(strict=True) != 0:
                raise UsageError(
                    f"avprep shard failed on some benchmark videos: see {shards[split]}/manifest"
                )
            (shards[split] / ".done").write_text("")
    return shards


def _same_benchmark(bench: Path, cfg: BenchmarkConfig) -> None:
    """UsageError naming the first setting where ``bench`` (finished) differs from ``cfg``."""
    try:
        made = json.loads((bench / "benchmark.json").read_text())["config"]
        theirs = BenchmarkConfig.content_of(made)
    except (OSError, ValueError, KeyError, TypeError, UsageError) as e:
        raise UsageError(f"{bench}: a finished benchmark without a readable benchmark.json ({e}); "
                         "use a new folder") from e  # fmt: skip
    for name, value in cfg.content_dict().items():
        if theirs.get(name) != value:
            flag = FLAGS[name][0] if name in FLAGS else name
            raise UsageError(f"{bench.parent} holds a benchmark made with {flag} {theirs.get(name)}, "
                             f"not {value}: use a new folder (its runs and features belong to it)")  # fmt: skip
