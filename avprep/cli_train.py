"""``avprep pretrain`` and ``avprep evaluate``: train on shards, and the protocol that shows
the methods learn. cmac_core (torch) is imported inside each command, never at module level.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from avprep import cli_options as opt
from avprep.cli_messages import err, import_for, is_rank0, one_line_errors, out
from avprep.errors import UsageError


def pretrain(
    shards: str = opt.shards_argument(),
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
    device: str = opt.device_option(),
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
    again = f"run the same command{'' if resume else ' with --resume'} to go on from its last checkpoint"
    with one_line_errors(again):
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
    size: int = typer.Option(
        112, "--size", help="Benchmark frame size in pixels (112: a 7 x 7 grid)."
    ),
    object_size: int = typer.Option(40, help="Benchmark object size in pixels."),
    classes: int = typer.Option(8, help="Benchmark classes that sound (avprep synth --classes)."),
    silent_classes: int = typer.Option(
        0,
        help="Benchmark classes that never sound: the distractors' (avprep synth --silent-classes).",
    ),
    crop_px: int = typer.Option(
        None, help="Training crop in pixels (default: --size, the whole frame)."
    ),
    arms: str = typer.Option(
        "",
        parser=opt.arms,
        metavar="ARM,...",
        help="Comma-separated arms (default random_init, avid, cmac, cmac_no_within, shuffled_audio; "
        "also lla, cmac_momentum, cmac_sharp).",
    ),
    report: Path = typer.Option(
        None,
        "--report",
        parser=opt.local_path,
        help="Where RESULTS.md, results.json and the PNGs go (default OUT/report).",
    ),
    sync_clips: int = typer.Option(32, help="Test clips of the synchronization 2AFC."),
    workers: int = typer.Option(2, help="Processes for synth and shard."),
    device: str = opt.device_option(),
) -> None:
    """Prove the methods learn: synth -> shard -> train every arm -> frozen features -> results."""
    with one_line_errors():
        evaluation = import_for("evaluate", "cmac_core.evaluate")
        cfg = evaluation.EvaluateConfig(out_dir=str(out_dir), quick=quick, preset=config, videos=videos,
                             test_videos=test_videos, steps=steps, seeds=seeds, batch_size=batch_size,
                             frame_px=size, object_px=object_size, classes=classes, silent_classes=silent_classes, crop_px=crop_px, arms=tuple(a for a in arms.split(",") if a), device=device,
                             workers=workers, sync_clips=sync_clips)  # fmt: skip
        from avprep.benchmark_shards import bench_config, benchmark_shards  # noqa: PLC0415

        # Refused before anything is written: a finished benchmark of other settings first, then
        # a folder or device it cannot use, or runs of other training settings.
        bench = bench_config(out_dir, videos=cfg.videos, test_videos=cfg.test_videos, seed=cfg.bench_seed,
                             workers=cfg.workers, frame_px=cfg.frame_px, object_px=cfg.object_px,
                             classes=cfg.classes, silent_classes=cfg.silent_classes)  # fmt: skip
        evaluation.prepare(cfg, report)
        log = lambda line: err.print(line, markup=False)  # noqa: E731
        shards = benchmark_shards(out_dir, bench, log=log)
        command = "avprep evaluate " + " ".join(
            sys.argv[2:] if sys.argv[1:2] == ["evaluate"] else sys.argv[1:]
        )
        result = evaluation.evaluate(cfg, train_shards=shards["train"], test_shards=shards["test"], report_dir=report,
                     command=command, on_event=lambda line: err.print(line, markup=False, highlight=False))  # fmt: skip
        failed = [c["claim"] for c in result.results["checks"] if not c["holds"]]
        out.print(f"evaluate: {result.report_dir / 'RESULTS.md'}; {len(result.results['checks']) - len(failed)} "
                  f"of {len(result.results['checks'])} pre-registered outcomes hold"
                  + (f" (not: {'; '.join(failed)})" if failed else ""), markup=False, highlight=False)  # fmt: skip
