"""``avprep shard`` and ``avprep inspect``: videos -> shards, and what a shard folder holds.

Each command parses, builds its config and makes one library call; the library
(PyAV, numpy, pyarrow) is imported inside the command, so ``avprep --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path

import typer

from avprep import cli_options as opt
from avprep.cli_messages import err, one_line_errors, out
from avprep.media.decoder import DECODERS, Decoder
from avprep.units import SIZE_HELP
from avprep.urls import out_path_or_url, path_or_url


def _default_rank_world() -> tuple[int, int]:
    from avprep.discover import rank_world_from_env  # noqa: PLC0415

    return rank_world_from_env()


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
