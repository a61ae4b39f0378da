"""``avprep demo``: the main job on a built-in default, with no downloads.

Generates a handful of synthetic videos with ffmpeg, or with PyAV where ffmpeg is not
installed (moving shapes with tones; one portrait phone-style video with rotation
metadata, one whose audio starts late, one in Matroska), shards them, and draws a
contact sheet.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from avprep.config import ShardConfig
from avprep.errors import UsageError

# (file name, generator keyword arguments)
VIDEOS = [
    ("orange_440hz.mp4", {"tone_hz": 440, "color": "orange"}),
    ("blue_880hz.mp4", {"tone_hz": 880, "color": "blue", "fps": 30}),
    ("portrait_rotated.mp4", {"tone_hz": 660, "color": "red", "rotate_deg": 90}),
    ("late_audio.mp4", {"tone_hz": 1320, "color": "yellow", "audio_delay_s": 0.5}),
    ("green_330hz.mkv", {"tone_hz": 330, "color": "green"}),
    ("white_2khz.mp4", {"tone_hz": 2000, "color": "white", "size": (480, 270)}),
]


def make_demo_videos(folder: Path, n_videos: int, *, duration_s: float = 12.0) -> list[Path]:
    from avprep.synth import make_demo_video  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_videos):
        name, kwargs = VIDEOS[i % len(VIDEOS)]
        if i >= len(VIDEOS):
            name = f"{Path(name).stem}_{i}{Path(name).suffix}"
        path = folder / name
        if not path.exists():
            make_demo_video(path, duration_s=duration_s, **kwargs)
        paths.append(path)
    return paths


def run_demo(out_dir: Path, *, n_videos: int = 6, workers: int = 0, console: Console) -> int:
    """Videos -> shards -> contact sheet under ``out_dir``; returns the exit code."""
    import os  # noqa: PLC0415

    from avprep.inspect import contact_sheet, print_stats, stats  # noqa: PLC0415
    from avprep.pipeline import shard_videos  # noqa: PLC0415
    from avprep.progress import make_progress, summary_table  # noqa: PLC0415

    if n_videos < 1:
        raise UsageError("--videos must be >= 1")
    out_dir = Path(out_dir)
    console.rule("[bold]1. synthetic videos")
    videos = make_demo_videos(out_dir / "videos", n_videos)
    console.print(f"{len(videos)} videos in {out_dir / 'videos'}")

    console.rule("[bold]2. avprep shard")
    cfg = ShardConfig(out_dir=str(out_dir / "shards"), workers=workers or os.cpu_count() or 1)
    err = Console(stderr=True)
    report = shard_videos(
        [str(out_dir / "videos")], cfg, progress=make_progress(quiet=False, console=err)
    )
    console.print(summary_table(report))

    console.rule("[bold]3. avprep inspect")
    print_stats(stats(out_dir / "shards"), console)
    sheet = out_dir / "contact_sheet.png"
    contact_sheet(out_dir / "shards", sheet, n_samples=4)
    console.print(f"contact sheet (frames above their spectrogram on one time axis): {sheet}")
    console.print(
        f"shards: {out_dir / 'shards'}/*.tar   manifest: {out_dir / 'shards' / 'manifest'}"
    )
    return report.exit_code(strict=True)


def pretrain_stage(out_dir: Path, *, steps: int, console: Console) -> Path:
    """Stage 4: the tiny CMAC model on the demo shards, on the CPU; its last checkpoint."""
    from cmac_core.config import preset  # noqa: PLC0415
    from cmac_core.data.shards import count_samples, resolve  # noqa: PLC0415
    from cmac_core.train import pretrain as run  # noqa: PLC0415

    console.rule("[bold]4. avprep pretrain --config tiny")
    run_dir = out_dir / "run"
    n_samples = count_samples(resolve(str(out_dir / "shards"))) or 2
    batch = max(
        2, min(preset("tiny").optim.batch_size, n_samples)
    )  # a few videos still fill a batch
    cfg = preset("tiny").replace(
        "optim", steps=steps, save_every_steps=steps, workers=1, batch_size=batch
    )
    result = run(
        str(out_dir / "shards"),
        run_dir,
        cfg,
        resume=(run_dir / "last.pt").exists(),
        device="cpu",
        complete_ok=True,
    )
    done = (
        "already complete" if result.final_loss is None else f"final loss {result.final_loss:.3f}"
    )
    console.print(
        f"{result.steps} steps of the tiny CMAC model on CPU ({done}); "
        f"metrics {run_dir / 'metrics.jsonl'}, checkpoint {result.last_checkpoint}",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    return result.last_checkpoint


def embed_stage(out_dir: Path, ckpt: Path, *, console: Console, localize) -> None:
    """Stage 5: embeddings of every segment, then attention maps (``localize``: the CLI's
    runner, which reports as ``avprep localize`` does)."""
    from cmac_core.embed import embed as run  # noqa: PLC0415

    console.rule("[bold]5. avprep embed + localize")
    emb = out_dir / "embeddings"
    report = run(str(out_dir / "shards"), ckpt, emb, device="cpu", workers=1, per_video=True)
    console.print(f"{report.rows_written} segment embeddings ({report.rows_skipped} already there): {emb}/*.parquet, "
              f"per video: {report.per_video}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    localize(str(out_dir / "shards"), ckpt, out_dir / "localize", device="cpu", limit=None)
    console.print(
        "The attention maps come from a tiny model trained for seconds: they show the tool working, "
        "not a trained localiser.",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
