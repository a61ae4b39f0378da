"""``avprep embed`` and ``avprep localize``: a checkpoint's frozen features of every segment
(a Parquet table) and its audio-guided attention maps. cmac_core (torch) is imported inside
each command, never at module level.
"""

from __future__ import annotations

from pathlib import Path

import typer

from avprep import cli_options as opt
from avprep.cli_messages import err, import_for, is_rank0, one_line_errors, out, report_damage
from avprep.errors import UsageError
from avprep.urls import out_path_or_url


def embed(
    shards: str = opt.shards_argument(),
    ckpt: Path = opt.ckpt_option(),
    out_dir: Path = typer.Option(
        ...,
        "--out",
        parser=out_path_or_url,
        help="EMB_DIR: the table's part-{rank}-{n}.parquet files, nothing else; or a URL (s3://bucket/emb).",
    ),
    batch_size: int = typer.Option(64, help="Clips per forward pass."),
    device: str = opt.device_option(),
    clips_per_segment: int = typer.Option(
        0, help="Clip windows per segment, averaged (0: enough to cover it; at most 1000)."
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
        if (
            attention_maps is not None
            and isinstance(out_dir, Path)
            and attention_maps.resolve().is_relative_to(out_dir.resolve())
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
            code = max(code, run_localize(shards, ckpt, attention_maps, device=device, limit=None))
        raise typer.Exit(code)


def localize(
    shards: str = opt.shards_argument(),
    ckpt: Path = opt.ckpt_option(),
    out_dir: Path = typer.Option(
        ...,
        "--out",
        parser=opt.local_path,
        help="Directory for {key}.npy, {key}.png and index.html.",
    ),
    device: str = opt.device_option(),
    limit: int = typer.Option(0, help="Only the first N segments (0: all)."),
) -> None:
    """Where is the sound? Audio-guided visual attention maps over each segment's middle frame."""
    with one_line_errors():
        code = run_localize(
            shards, ckpt, out_dir, device=device, limit=None if limit == 0 else limit
        )
    raise typer.Exit(code)


def run_localize(shards: str, ckpt: Path, out_dir: Path, *, device: str, limit: int | None) -> int:
    """Run localize (every rank); rank 0 reports. The exit code: 1 if a shard was unreadable."""
    run = import_for("localize", "cmac_core.localize").localize
    report = run(shards, ckpt, out_dir, device=device, limit=limit)
    if is_rank0():
        out.print(f"localize: {report.maps} attention maps ({report.skipped} already there); "
                  f"browse {out_dir / 'index.html'}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    return report_damage(report.damage)
