"""The ``avprep`` command line: parse -> config -> one library call.

Nothing heavy is imported at module level, so ``avprep --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from avprep import cli_options as opt
from avprep.cli_messages import (
    err,
    import_for,
    is_rank0,
    one_line_errors,
    out,
    report_damage,
)
from avprep.errors import UsageError
from avprep.media.decoder import DECODERS, Decoder
from avprep.units import SIZE_HELP
from avprep.urls import out_path_or_url, path_or_url

app = typer.Typer(
    name="avprep",
    help="Any video -> time-synchronized WebDataset shards of frames and log-mel spectrograms.",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from avprep import __version__  # noqa: PLC0415

        out.print(f"avprep {__version__}", markup=False, highlight=False)
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Any video -> time-synchronized WebDataset shards of frames and log-mel spectrograms."""


def _default_rank_world() -> tuple[int, int]:
    from avprep.discover import rank_world_from_env  # noqa: PLC0415

    return rank_world_from_env()


def _shards_argument():
    return typer.Argument(
        ...,
        help="Shard directory, glob, brace pattern or URL(s) joined by '::'.",
        show_default=False,
    )


def _device_option():
    return typer.Option(
        "auto",
        parser=opt.device,
        metavar=opt.DEVICE_METAVAR,
        help="auto (CUDA when present), cpu, cuda or cuda:N.",
    )


def _ckpt_option():
    return typer.Option(
        ..., "--ckpt", parser=opt.local_path, help="A checkpoint written by avprep pretrain."
    )


@app.command()
def shard(
    inputs: list[Path] = typer.Argument(
        ...,
        parser=path_or_url,
        help="Folders, media files or manifests (.csv/.jsonl/.parquet with a 'path' column); "
        "each may be a URL (s3://, https://, any installed fsspec protocol).",
        show_default=False,
    ),  # noqa: E501
    out_dir: Path = typer.Option(
        ...,
        "--out",
        parser=out_path_or_url,
        help="Output directory for shards and manifest/, or a URL (s3://bucket/prefix).",
    ),
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
    spec_preset: str = opt.choice_option(
        "logmel128",
        opt.SPEC_PRESETS,
        help="logmel128: 128 mels, 25 ms window, 10 ms hop, log (AST/Kaldi). vggish64: VGGish's 64-mel front end.",
    ),  # noqa: E501
    keep_audio: bool = typer.Option(False, "--keep-audio", help="Also store the waveform as FLAC."),
    jpeg_quality: int = typer.Option(
        90, help="JPEG quality 1-100 (90: visually lossless at this size)."
    ),  # noqa: E501
    shard_max_samples: int = typer.Option(1000, help="Cut a shard after this many samples."),
    shard_max_bytes: int = typer.Option(
        "256MiB",
        parser=opt.size,
        metavar="SIZE",
        help="Cut a shard after this many bytes (webdataset advises 100 MB-1 GB shards); shards are "
        f"cut between videos. 1000000, 256M, 1.5GiB: {SIZE_HELP}.",
    ),
    workers: int = typer.Option(
        0, help="Worker processes (0: one per CPU this process may use, as taskset/Slurm allow)."
    ),
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
    decoder: str = opt.choice_option(
        Decoder.auto.value,
        DECODERS,
        help="auto: PyAV in-process, the ffmpeg CLI for files PyAV fails on; pyav or ffmpeg: "
        "that one only; decord: decord (the decord extra), the ffmpeg CLI where decord cannot.",
    ),  # noqa: E501
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any input failed."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress or summary; errors only."),
) -> None:
    """Shard videos into WebDataset tar shards of synchronized frames and log-mel spectrograms."""
    with one_line_errors():
        env_rank, env_world = _default_rank_world()
        from avprep.config import ShardConfig, available_cpus  # noqa: PLC0415

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
            workers=workers or available_cpus(),
            rank=env_rank if rank < 0 else rank,
            world_size=env_world if world_size < 0 else world_size,
            timeout_seconds=timeout,
            decoder=decoder,
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
        ...,
        parser=path_or_url,
        help="An avprep shard output directory, or its URL (s3://bucket/shards).",
        show_default=False,
    ),
    png: Path = typer.Option(
        None, "--png", parser=opt.local_path, help="Write a contact sheet of a few samples here."
    ),
    samples: int = typer.Option(4, help="Samples on the contact sheet."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the counts as one JSON object (for scripts), not a table."
    ),
) -> None:
    """Counts, hours and failures of a shard directory; optionally a contact sheet PNG."""
    with one_line_errors():
        from avprep.inspect import contact_sheet, print_stats, stats  # noqa: PLC0415

        st = stats(shard_dir)
        if not as_json:
            print_stats(st, out)
        if png is not None:
            problems: list[str] = []
            contact_sheet(shard_dir, png, n_samples=samples, problems=problems)
            for line in problems:
                err.print(f"avprep: left out of the contact sheet: {line}",
                          markup=False, highlight=False, soft_wrap=True)  # fmt: skip
            if not as_json:
                out.print(f"contact sheet: {png}", markup=False, highlight=False)
        if as_json:
            import json  # noqa: PLC0415

            print(json.dumps({**st, "contact_sheet": None if png is None else str(png)}))


@app.command()
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

        cfg = BenchmarkConfig(out_dir=str(out_dir), videos=videos, test_videos=test_videos, seed=seed,
                              objects=objects, classes=classes, noise=noise, silence=silence,
                              duration_s=seconds, fps=fps, frame_size_px=size, object_size_px=object_size,
                              sample_rate_hz=sample_rate, workers=workers or os.cpu_count() or 1)  # fmt: skip
        report = make_benchmark(cfg)
        if not quiet:
            counts = " + ".join(f"{n} {split}" for split, n in report.videos.items())
            out.print(f"synth: {counts} videos in {report.seconds:.1f} s; manifests: "
                      + ", ".join(str(p) for p in report.manifests.values()), markup=False, highlight=False)  # fmt: skip
            out.print(f"shard with: avprep shard {report.manifests['train']} --out SHARDS "
                      f"--short-side {size} --fps {fps:g}", markup=False, highlight=False)  # fmt: skip


@app.command()
def evaluate(
    out_dir: Path = typer.Argument(
        ...,
        parser=opt.local_path,
        help="Folder for everything: benchmark, shards, runs, features.",
        show_default=False,
    ),
    quick: bool = typer.Option(
        False, "--quick", help="CI size: random init, avid, cmac; 1 seed; minutes."
    ),
    config: str = opt.choice_option(
        "auto", opt.EVALUATE_SIZES, help="tiny, base or auto (base on a GPU, else tiny)."
    ),
    seeds: int = typer.Option(None, help="Seeds per arm (default 2; --quick 1)."),
    steps: int = typer.Option(None, help="Training steps per arm (default 300; --quick 40)."),
    videos: int = typer.Option(None, help="Training videos (default 200; --quick 48)."),
    test_videos: int = typer.Option(None, help="Test videos (default 100; --quick 32)."),
    batch_size: int = typer.Option(16, help="Clips per training step."),
    crop_px: int = typer.Option(112, help="Training crop in pixels (112: a 7 x 7 grid)."),
    arms: str = typer.Option(
        "",
        parser=opt.arms,
        metavar="ARM,...",
        help="Comma-separated arms (default random_init, avid, cmac, cmac_no_within, shuffled_audio; "
        "also lla).",
    ),
    report: Path = typer.Option(
        None,
        "--report",
        parser=opt.local_path,
        help="Where RESULTS.md, results.json and the PNGs go (default OUT/report).",
    ),
    sync_clips: int = typer.Option(32, help="Test clips of the synchronization 2AFC."),
    workers: int = typer.Option(2, help="Processes for synth and shard."),
    device: str = _device_option(),
) -> None:
    """Prove the methods learn: synth -> shard -> train every arm -> frozen features -> results."""
    with one_line_errors():
        evaluation = import_for("evaluate", "cmac_core.evaluate")
        cfg = evaluation.EvaluateConfig(out_dir=str(out_dir), quick=quick, preset=config, videos=videos,
                             test_videos=test_videos, steps=steps, seeds=seeds, batch_size=batch_size,
                             crop_px=crop_px, arms=tuple(a for a in arms.split(",") if a), device=device,
                             workers=workers, sync_clips=sync_clips)  # fmt: skip
        from avprep.benchmark_shards import benchmark_shards  # noqa: PLC0415

        shards = benchmark_shards(out_dir, videos=cfg.videos, test_videos=cfg.test_videos,
                                  seed=cfg.bench_seed, workers=cfg.workers,
                                  log=lambda line: err.print(line, markup=False))  # fmt: skip
        command = "avprep evaluate " + " ".join(
            sys.argv[2:] if sys.argv[1:2] == ["evaluate"] else sys.argv[1:]
        )
        result = evaluation.evaluate(cfg, train_shards=shards["train"], test_shards=shards["test"], report_dir=report,
                     command=command, on_event=lambda line: err.print(line, markup=False, highlight=False))  # fmt: skip
        failed = [c["claim"] for c in result.results["checks"] if not c["holds"]]
        out.print(f"evaluate: {result.report_dir / 'RESULTS.md'}; {len(result.results['checks']) - len(failed)} "
                  f"of {len(result.results['checks'])} pre-registered outcomes hold"
                  + (f" (not: {'; '.join(failed)})" if failed else ""), markup=False, highlight=False)  # fmt: skip


@app.command()
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
            embed_stage(out_dir, ckpt, console=out, localize=_localize)
    raise typer.Exit(code)


@app.command()
def pretrain(
    shards: str = _shards_argument(),
    run_dir: Path = typer.Option(
        ...,
        "--out",
        parser=opt.local_path,
        help="Run directory: config, metrics.jsonl, checkpoints.",
    ),
    config: str = typer.Option(
        "base", help="tiny | base | a YAML or JSON file (as config.json in a run dir)."
    ),
    steps: int = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    epochs: int = typer.Option(None, help="Passes over the shards (default from the config: 1)."),
    batch_size: int = typer.Option(None, help="Clips per rank per step."),
    lr: float = typer.Option(
        None, help="Peak learning rate (AVID default 2e-4; warm-up then cosine)."
    ),
    workers: int = typer.Option(None, help="Data-loader processes per rank."),
    method: str = opt.choice_option(
        None,
        opt.METHODS,
        help="cmac (default), avid (the contrastive term alone) or lla (co-attention, "
        "audio-visual synchronization; with tiny/base: 16-frame clips, see docs/method.md).",
    ),
    save_every: int = typer.Option(None, help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last.pt."),
    record_keys: bool = typer.Option(
        None,
        "--record-keys",
        help="Write every step's sample keys to RUN_DIR/keys/ (optim.record_keys).",
    ),
    device: str = _device_option(),
    settings: list[str] = typer.Option(
        None,
        "--set",
        metavar="SECTION.FIELD=VALUE",
        help="Change one config setting, after --config (repeatable): --set model.embed_dim=64 "
        "--set optim.lr=1e-3; lists as 0.3,1.0. Checked as a config file is.",
    ),
) -> None:
    """Pretrain CMAC (or the AVID baseline, or LLA) on shards; also runs under torchrun."""
    flags = {"--steps": ("optim.steps", steps), "--epochs": ("optim.epochs", epochs),
             "--batch-size": ("optim.batch_size", batch_size), "--lr": ("optim.lr", lr),
             "--workers": ("optim.workers", workers), "--save-every": ("optim.save_every_steps", save_every),
             "--method": ("loss.method", method), "--record-keys": ("optim.record_keys", record_keys)}  # fmt: skip
    with one_line_errors():
        from cmac_core import config_files as cmac_config  # noqa: PLC0415  (no torch: checked first)

        changes = cmac_config.parse_overrides(settings or [])
        for flag, (key, value) in flags.items():
            if value is not None and key in changes:
                raise UsageError(f"{key} is given by both {flag} and --set; give it once")
        changes.update({k: v for k, v in flags.values() if v is not None and k != "loss.method"})
        cfg = cmac_config.load(config, method=method, overrides=changes)

        result = import_for("pretrain", "cmac_core.train").pretrain(
            shards, run_dir, cfg, resume=resume, device=device
        )
        if result.damage and is_rank0():
            for line in result.damage.lines():
                err.print(f"avprep: {line}", markup=False, highlight=False, soft_wrap=True)
            err.print(f"avprep: pretraining went on without them ({result.damage.n_samples} "
                      f"damaged samples, {len(result.damage.cut_short)} shards read only in part)",
                      markup=False, highlight=False)  # fmt: skip
        if result.final_loss is not None and is_rank0():
            out.print(
                f"pretrain: {result.steps} steps, final loss {result.final_loss:.4f}, "
                f"{result.samples_per_s:.1f} samples/s, data wait {100 * result.data_wait_frac:.1f}%"
                + (f", {result.skipped_steps} non-finite steps skipped" if result.skipped_steps else "")
                + f"; checkpoint {result.last_checkpoint}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip


@app.command()
def embed(
    shards: str = _shards_argument(),
    ckpt: Path = _ckpt_option(),
    out_dir: Path = typer.Option(
        ...,
        "--out",
        parser=opt.local_path,
        help="EMB_DIR: the table's part-{rank}-{n}.parquet files, nothing else.",
    ),
    batch_size: int = typer.Option(64, help="Clips per forward pass."),
    device: str = _device_option(),
    clips_per_segment: int = typer.Option(
        0, help="Clip windows per segment, averaged (0: enough to cover it)."
    ),  # noqa: E501
    workers: int = typer.Option(
        None,
        help="Data-loader processes per rank (default: as pretraining used, within this rank's CPUs).",
    ),
    per_video: bool = typer.Option(
        False, "--per-video", help="Also write EMB_DIR.videos.parquet beside it (mean of segments)."
    ),  # noqa: E501
    attention_maps: Path = typer.Option(
        None,
        "--attention-maps",
        parser=opt.local_path,
        help="Also write attention maps here (as avprep localize).",
    ),  # noqa: E501
) -> None:
    """Frozen embeddings of every segment to Parquet; resumable; also under torchrun."""
    with one_line_errors():
        run = import_for("embed", "cmac_core.embed").embed
        if attention_maps is not None and attention_maps.resolve().is_relative_to(
            out_dir.resolve()
        ):
            raise UsageError(
                f"--attention-maps {attention_maps} is inside --out {out_dir}: readers of the "
                "table (pandas, pyarrow) would read the maps' files too; put them beside it"
            )

        report = run(shards, ckpt, out_dir, batch_size=batch_size, device=device,
                     clips_per_segment=clips_per_segment or None, workers=workers, per_video=per_video)  # fmt: skip
        if is_rank0():
            out.print(f"embed: {report.rows_written} segments embedded ({report.rows_skipped} already done), "
                      f"{report.clips / max(report.seconds, 1e-9):.1f} clips/s ({report.precision}); "
                      f"table: {out_dir}/*.parquet"
                      + (f", per video: {report.per_video}" if report.per_video else ""),
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        code = report_damage(report.damage)
        code = max(code, 1 if report.collisions else 0)  # the same on every rank
        if report.collisions and is_rank0():
            named = "; ".join(f"{key} {len(urls)} times: {', '.join(list(dict.fromkeys(urls))[:3])}"
                              for key, urls in sorted(report.collisions.items())[:3])  # fmt: skip
            more = "; ..." if len(report.collisions) > 3 else ""
            err.print(f"avprep: {len(report.collisions)} sample keys met more than once ({named}{more}): "
                      "each is in the table once, from the first shard named, and their videos have no "
                      "per-video row; embed datasets whose keys collide into separate --out folders",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        if attention_maps is not None:
            code = max(code, _localize(shards, ckpt, attention_maps, device=device, limit=None))
        raise typer.Exit(code)


@app.command()
def localize(
    shards: str = _shards_argument(),
    ckpt: Path = _ckpt_option(),
    out_dir: Path = typer.Option(
        ...,
        "--out",
        parser=opt.local_path,
        help="Directory for {key}.npy, {key}.png and index.html.",
    ),
    device: str = _device_option(),
    limit: int = typer.Option(0, help="Only the first N segments (0: all)."),
) -> None:
    """Where is the sound? Audio-guided visual attention maps over each segment's middle frame."""
    with one_line_errors():
        code = _localize(shards, ckpt, out_dir, device=device, limit=None if limit == 0 else limit)
    raise typer.Exit(code)


def _localize(shards: str, ckpt: Path, out_dir: Path, *, device: str, limit: int | None) -> int:
    """Run localize (every rank); rank 0 reports. The exit code: 1 if a shard was unreadable."""
    run = import_for("localize", "cmac_core.localize").localize
    report = run(shards, ckpt, out_dir, device=device, limit=limit)
    if is_rank0():
        out.print(f"localize: {report.maps} attention maps ({report.skipped} already there); "
                  f"browse {out_dir / 'index.html'}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    return report_damage(report.damage)


def main() -> None:
    """Entry point: usage errors (unknown options, bad values) also get one line, exit 2."""
    args = sys.argv[1:] or ["--help"]  # bare avprep: its help, exit 0
    try:
        code = app(args=args, prog_name="avprep", standalone_mode=False)
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
