"""The ``avprep`` command line: parse -> config -> one library call.

Nothing heavy is imported at module level, so ``avprep --help`` is instant.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from avprep.errors import AvprepError, UsageError

app = typer.Typer(
    name="avprep",
    help="Any video -> time-synchronized WebDataset shards of frames and log-mel spectrograms.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console(soft_wrap=True)  # paths are never broken across lines


@contextlib.contextmanager
def one_line_errors():
    """AvprepError -> ``avprep: error: ...`` on stderr and its exit code; no traceback."""
    try:
        yield
    except AvprepError as e:
        err.print(f"avprep: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("avprep: interrupted; run the same command again to resume", markup=False)
        raise typer.Exit(130) from None


def _default_rank_world() -> tuple[int, int]:
    from avprep.discover import rank_world_from_env  # noqa: PLC0415

    return rank_world_from_env()


@app.command()
def shard(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Folders, media files or manifests (.csv/.jsonl/.parquet with a 'path' column).",
        show_default=False,
    ),  # noqa: E501
    out_dir: Path = typer.Option(..., "--out", help="Output directory for shards and manifest/."),
    fps: float = typer.Option(
        16.0, help="Frames per second stored (AVID/CMAC sample video at 16 fps)."
    ),  # noqa: E501
    short_side: int = typer.Option(
        128, help="Short side of stored frames in pixels (resize to 128, crop 112 at train time)."
    ),  # noqa: E501
    segment_seconds: float = typer.Option(
        10.0, help="Longest sample; longer videos become several (10 s: AudioSet/VGGSound clips)."
    ),  # noqa: E501
    min_seconds: float = typer.Option(
        1.0, help="Shorter inputs are skipped and a shorter tail is dropped."
    ),  # noqa: E501
    sample_rate: int = typer.Option(
        16000, help="Audio sample rate in Hz, mono (the speech/AudioSet convention)."
    ),  # noqa: E501
    spec_preset: str = typer.Option(
        "logmel128",
        help="logmel128: 128 mels, 25 ms window, 10 ms hop, log (AST/Kaldi). vggish64: VGGish's 64-mel front end.",
    ),  # noqa: E501
    keep_audio: bool = typer.Option(False, "--keep-audio", help="Also store the waveform as FLAC."),
    jpeg_quality: int = typer.Option(
        90, help="JPEG quality 1-100 (90: visually lossless at this size)."
    ),  # noqa: E501
    shard_max_samples: int = typer.Option(1000, help="Cut a shard after this many samples."),
    shard_max_bytes: int = typer.Option(
        256 * 1024**2,
        help="Cut a shard after this many bytes (webdataset advises 100 MB-1 GB shards); shards are cut between videos.",
    ),  # noqa: E501
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    rank: int = typer.Option(
        -1, help="This job's rank (default: torchrun RANK, Slurm array/task ids, else 0)."
    ),  # noqa: E501
    world_size: int = typer.Option(
        -1, help="Number of ranks (default: torchrun WORLD_SIZE, Slurm counts, else 1)."
    ),  # noqa: E501
    timeout: float = typer.Option(
        120.0,
        help="Seconds a file may make no progress (probe or one segment) before it is failed as 'timeout'.",
    ),  # noqa: E501
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any input failed."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress or summary; errors only."),
) -> None:
    """Shard videos into WebDataset tar shards of synchronized frames and log-mel spectrograms."""
    import os  # noqa: PLC0415

    with one_line_errors():
        env_rank, env_world = _default_rank_world()
        from avprep.config import ShardConfig  # noqa: PLC0415

        cfg = ShardConfig(
            out_dir=str(out_dir),
            fps=fps,
            short_side_px=short_side,
            segment_seconds=segment_seconds,
            min_seconds=min_seconds,
            sample_rate_hz=sample_rate,
            spec_preset=spec_preset,
            keep_audio=keep_audio,
            jpeg_quality=jpeg_quality,
            shard_max_samples=shard_max_samples,
            shard_max_bytes=shard_max_bytes,
            workers=workers or os.cpu_count() or 1,
            rank=env_rank if rank < 0 else rank,
            world_size=env_world if world_size < 0 else world_size,
            timeout_seconds=timeout,
            strict=strict,
            quiet=quiet,
        )
        code = run_shard([str(p) for p in inputs], cfg)
    raise typer.Exit(code)


def run_shard(inputs: list[str], cfg) -> int:
    from avprep.pipeline import shard_videos  # noqa: PLC0415
    from avprep.progress import make_progress, summary_table  # noqa: PLC0415

    report = shard_videos(inputs, cfg, progress=make_progress(quiet=cfg.quiet, console=err))
    if not cfg.quiet:
        out.print(summary_table(report))
        if report.unaccounted:
            shown = ", ".join(report.unaccounted[:3]) + (
                ", ..." if len(report.unaccounted) > 3 else ""
            )
            err.print(f"avprep: {len(report.unaccounted)} inputs unaccounted for: {shown}",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    return report.exit_code(strict=cfg.strict)


@app.command()
def inspect(
    shard_dir: Path = typer.Argument(
        ..., help="An avprep shard output directory.", show_default=False
    ),  # noqa: E501
    png: Path = typer.Option(None, "--png", help="Write a contact sheet of a few samples here."),
    samples: int = typer.Option(4, help="Samples on the contact sheet."),
) -> None:
    """Counts, hours and failures of a shard directory; optionally a contact sheet PNG."""
    with one_line_errors():
        from avprep.inspect import contact_sheet, print_stats, stats  # noqa: PLC0415

        print_stats(stats(shard_dir), out)
        if png is not None:
            contact_sheet(shard_dir, png, n_samples=samples)
            out.print(f"contact sheet: {png}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("avprep-demo"), "--out", help="Where the demo writes."),
    videos: int = typer.Option(6, help="Synthetic videos to generate."),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    steps: int = typer.Option(20, help="Tiny pretraining steps on the demo shards."),
) -> None:
    """Synthetic videos -> shards -> contact sheet -> a tiny CMAC pretraining run (CPU is fine)."""
    with one_line_errors(), cmac_errors():
        from avprep.demo import run_demo  # noqa: PLC0415

        code = run_demo(out_dir, n_videos=videos, workers=workers, console=out)
        if code == 0:
            ckpt = _demo_pretrain(out_dir, steps=steps)
            _demo_embed(out_dir, ckpt)
    raise typer.Exit(code)


def _demo_pretrain(out_dir: Path, *, steps: int) -> Path:
    from cmac_core.config import preset  # noqa: PLC0415
    from cmac_core.data.shards import count_samples, resolve  # noqa: PLC0415
    from cmac_core.train import pretrain as run  # noqa: PLC0415

    out.rule("[bold]4. avprep pretrain --config tiny")
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
    out.print(
        f"{result.steps} steps of the tiny CMAC model on CPU ({done}); "
        f"metrics {run_dir / 'metrics.jsonl'}, checkpoint {result.last_checkpoint}",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    return result.last_checkpoint


def _demo_embed(out_dir: Path, ckpt: Path) -> None:
    from cmac_core.embed import embed as run  # noqa: PLC0415

    out.rule("[bold]5. avprep embed + localize")
    emb = out_dir / "embeddings"
    report = run(str(out_dir / "shards"), ckpt, emb, device="cpu", workers=1, per_video=True)
    out.print(f"{report.rows_written} segment embeddings ({report.rows_skipped} already there): {emb}/*.parquet, "
              f"per video: {report.per_video}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    _localize(str(out_dir / "shards"), ckpt, out_dir / "localize", device="cpu", limit=None)
    out.print(
        "The attention maps come from a tiny model trained for seconds: they show the tool working, "
        "not a trained localiser.",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip


def _shards_argument():
    return typer.Argument(
        ...,
        help="Shard directory, glob, brace pattern or URL(s) joined by '::'.",
        show_default=False,
    )


def _device_option():
    return typer.Option("auto", help="auto (CUDA when present), cuda or cpu.")


def _is_rank0() -> bool:
    """Under torchrun only rank 0 talks to the person."""
    return int(os.environ.get("RANK", "0")) == 0


@app.command()
def pretrain(
    shards: str = _shards_argument(),
    run_dir: Path = typer.Option(
        ..., "--out", help="Run directory: config, metrics.jsonl, checkpoints."
    ),
    config: str = typer.Option("base", help="tiny | base | a JSON file (as saved in a run dir)."),
    steps: int = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    epochs: int = typer.Option(None, help="Passes over the shards (default from the config: 1)."),
    batch_size: int = typer.Option(None, help="Clips per rank per step."),
    lr: float = typer.Option(
        None, help="Peak learning rate (AVID default 2e-4; warm-up then cosine)."
    ),
    workers: int = typer.Option(None, help="Data-loader processes per rank."),
    method: str = typer.Option(None, help="cmac (default) or avid (the contrastive term alone)."),
    save_every: int = typer.Option(None, help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last.pt."),
    device: str = _device_option(),
) -> None:
    """Pretrain CMAC (or the AVID baseline) on shards; also runs under torchrun."""
    optim = {"steps": steps, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "workers": workers, "save_every_steps": save_every}  # fmt: skip
    with one_line_errors(), cmac_errors():
        from cmac_core import config as cmac_config  # noqa: PLC0415
        from cmac_core.train import pretrain as run  # noqa: PLC0415

        cfg = cmac_config.load(config).replace("optim", **optim)
        if method is not None:
            cfg = cfg.replace("loss", method=method)
        result = run(shards, run_dir, cfg, resume=resume, device=device)
        if result.final_loss is not None and _is_rank0():
            out.print(
                f"pretrain: {result.steps} steps, final loss {result.final_loss:.4f}, "
                f"{result.samples_per_s:.1f} samples/s, data wait {100 * result.data_wait_frac:.1f}%; "
                f"checkpoint {result.last_checkpoint}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip


@app.command()
def embed(
    shards: str = _shards_argument(),
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint written by avprep pretrain."),
    out_dir: Path = typer.Option(..., "--out", help="EMB_DIR for part-{rank}-{n}.parquet files."),
    batch_size: int = typer.Option(64, help="Clips per forward pass."),
    device: str = _device_option(),
    clips_per_segment: int = typer.Option(
        0, help="Clip windows per segment, averaged (0: enough to cover it)."
    ),  # noqa: E501
    workers: int = typer.Option(2, help="Data-loader processes per rank."),
    per_video: bool = typer.Option(
        False, "--per-video", help="Also write _per_video/videos.parquet (mean of segments)."
    ),  # noqa: E501
    attention_maps: Path = typer.Option(
        None, "--attention-maps", help="Also write attention maps here (as avprep localize)."
    ),  # noqa: E501
) -> None:
    """Frozen embeddings of every segment to Parquet; resumable; also under torchrun."""
    with one_line_errors(), cmac_errors():
        from cmac_core.embed import embed as run  # noqa: PLC0415

        if attention_maps is not None and attention_maps.resolve().is_relative_to(
            out_dir.resolve()
        ):
            raise UsageError(
                f"--attention-maps {attention_maps} is inside --out {out_dir}: readers of the "
                "table (pandas, pyarrow) would read the maps' files too; put them beside it"
            )

        report = run(shards, ckpt, out_dir, batch_size=batch_size, device=device,
                     clips_per_segment=clips_per_segment or None, workers=workers, per_video=per_video)  # fmt: skip
        if _is_rank0():
            out.print(f"embed: {report.rows_written} segments embedded ({report.rows_skipped} already done), "
                      f"{report.clips / max(report.seconds, 1e-9):.1f} clips/s; table: {out_dir}/*.parquet"
                      + (f", per video: {report.per_video}" if report.per_video else ""),
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        code = _shard_errors(report.errors)
        if attention_maps is not None:
            code = max(code, _localize(shards, ckpt, attention_maps, device=device, limit=None))
        raise typer.Exit(code)


@app.command()
def localize(
    shards: str = _shards_argument(),
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint written by avprep pretrain."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Directory for {key}.npy, {key}.png and index.html."
    ),
    device: str = _device_option(),
    limit: int = typer.Option(0, help="Only the first N segments (0: all)."),
) -> None:
    """Where is the sound? Audio-guided visual attention maps over each segment's middle frame."""
    with one_line_errors(), cmac_errors():
        code = _localize(shards, ckpt, out_dir, device=device, limit=None if limit == 0 else limit)
    raise typer.Exit(code)


def _localize(shards: str, ckpt: Path, out_dir: Path, *, device: str, limit: int | None) -> int:
    """Run localize (every rank); rank 0 reports. The exit code: 1 if a shard was unreadable."""
    from cmac_core.localize import localize as run  # noqa: PLC0415

    report = run(shards, ckpt, out_dir, device=device, limit=limit)
    if _is_rank0():
        out.print(f"localize: {report.maps} attention maps ({report.skipped} already there); "
                  f"browse {out_dir / 'index.html'}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    return _shard_errors(report.errors)


def _shard_errors(errors: dict[str, str]) -> int:
    """Rank 0 names the shards that could not be read on (their readable samples were used)."""
    if errors and _is_rank0():
        for url, why in sorted(errors.items()):
            err.print(f"avprep: shard {url} could not be read to its end: {why}",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        err.print(f"avprep: {len(errors)} damaged or foreign shards; the samples read from them "
                  "are in the output, a rerun will not find the rest", markup=False, highlight=False)  # fmt: skip
    return 1 if errors else 0


@contextlib.contextmanager
def cmac_errors():
    """cmac_core's one-line errors (config, shards, checkpoints, training) -> AvprepError."""
    try:
        yield
    except Exception as e:
        names = {"ConfigError", "ShardSpecError", "CheckpointError", "TrainingError",
                 "UnsafeShardError", "SchemaVersionError", "EmbedError", "LocalizeError",
                 "DeviceError", "ShardFormatError"}  # fmt: skip
        chain = [e, e.__cause__, e.__context__]
        known = next((x for x in chain if x is not None and type(x).__name__ in names), None)
        if known is None:
            raise
        # Errors raised in a data-loader worker arrive with the worker's traceback
        # in the message; its last line is "package.module.SomeError: message".
        last = str(known).strip().splitlines()[-1]
        head, sep, rest = last.partition(": ")
        raise AvprepError(rest if sep and head.endswith(tuple(names)) else last) from None


def main() -> None:
    """Entry point: usage errors (unknown options, bad values) also get one line, exit 2."""
    try:
        code = app(prog_name="avprep", standalone_mode=False)
    except Exception as e:
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise  # a bug, not a usage error: keep the traceback
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err.print(
            f"avprep: error: {e.format_message()}{where}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
