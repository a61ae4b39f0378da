"""``avprep synth`` and ``avprep demo``: synthetic videos with known truth, and the demo
that takes a few of them through every stage (shard, contact sheet, pretrain, embed, localize).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from avprep import cli_options as opt
from avprep.cli_embed import run_localize
from avprep.cli_messages import import_for, one_line_errors, out
from avprep.errors import UsageError


def synth(
    out_dir: Path = typer.Argument(
        ..., parser=opt.local_path, help="A new folder for the benchmark.", show_default=False
    ),
    videos: int = typer.Option(200, help="Training videos."),
    test_videos: int = typer.Option(50, help="Test videos (never shared with training)."),
    seed: int = typer.Option(0, help="The same seed and options give byte-identical files."),
    objects: int = typer.Option(
        2, help="Objects per video (2-3): one sounds, the others are distractors."
    ),
    classes: int = typer.Option(8, help="K classes (2-8), each a shape, colour, pitch and timbre."),
    silent_classes: int = typer.Option(
        0,
        help="D more classes that never sound, the distractors' (K + D <= 8; 0: any class sounds).",
    ),
    noise: float = typer.Option(
        0.1, help="0-1: audio noise RMS of a strike's peak; pixel noise of 40 levels."
    ),
    silence: float = typer.Option(0.0, help="0-0.5: the part of each video in one silent stretch."),
    seconds: float = typer.Option(4.0, help="Length of each video."),
    fps: float = typer.Option(8.0, help="Frames per second."),
    size: int = typer.Option(112, help="Frame width and height in pixels (a multiple of 16)."),
    object_size: int = typer.Option(
        40, help="Object width and height in pixels (>= 32: two grid cells)."
    ),
    sample_rate: int = typer.Option(16000, help="Audio sample rate in Hz."),
    workers: int = typer.Option(0, help="Videos encoded at once (0: one per CPU core)."),
    quiet: bool = typer.Option(False, "--quiet", help="No summary."),
) -> None:
    """A synthetic audio-visual benchmark: videos whose sounding object, class and box are known."""
    with one_line_errors():
        from avprep.benchmark import BenchmarkConfig, make_benchmark  # noqa: PLC0415

        if workers < 0:
            raise UsageError(f"--workers must be in 0..64 (0: one per CPU core), got {workers}")

        cfg = BenchmarkConfig(out_dir=str(out_dir), videos=videos, test_videos=test_videos, seed=seed,
                              objects=objects, classes=classes, silent_classes=silent_classes, noise=noise, silence=silence,
                              duration_s=seconds, fps=fps, frame_size_px=size, object_size_px=object_size,
                              sample_rate_hz=sample_rate, workers=workers or os.cpu_count() or 1)  # fmt: skip
        report = make_benchmark(cfg)
        if not quiet:
            counts = " + ".join(f"{n} {split}" for split, n in report.videos.items())
            out.print(f"synth: {counts} videos in {report.seconds:.1f} s; manifests: "
                      + ", ".join(str(p) for p in report.manifests.values()), markup=False, highlight=False)  # fmt: skip
            out.print(f"shard with: avprep shard {report.manifests['train']} --out SHARDS "
                      f"--short-side {size} --fps {fps:g}", markup=False, highlight=False)  # fmt: skip


def demo(
    out_dir: Path = typer.Option(
        Path("avprep-demo"), "--out", parser=opt.local_path, help="Where the demo writes."
    ),
    videos: int = typer.Option(6, help="Synthetic videos to generate."),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    steps: int = typer.Option(20, help="Tiny pretraining steps on the demo shards."),
) -> None:
    """Synthetic videos -> shards -> contact sheet -> a tiny CMAC pretraining run (CPU is fine)."""
    with one_line_errors():
        from avprep.demo import embed_stage, pretrain_stage, run_demo  # noqa: PLC0415

        import_for("demo", "cmac_core.train")  # before minutes of shard work, not after
        code = run_demo(out_dir, n_videos=videos, workers=workers, console=out)
        if code == 0:
            ckpt = pretrain_stage(out_dir, steps=steps, console=out)
            embed_stage(out_dir, ckpt, console=out, localize=run_localize)
    raise typer.Exit(code)
