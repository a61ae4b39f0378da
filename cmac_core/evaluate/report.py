"""The report: ``RESULTS.md`` (command, commit, machine, the table, the pre-registered
outcomes beside the measured figures, each arm minus avid seed by seed, where the time
went), ``results.json`` (the same figures for scripts), ``results_curves.png`` and
``results_maps.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cmac_core.evaluate import paired, pictures
from cmac_core.evaluate.arms import arm

COLUMNS = [  # (results key, header)
    ("beta_v.which_object", "which object β"), ("beta_v.pointing", "pointing β"),
    ("beta_v.pointing_mid", "pointing β, middle frame"), ("beta_v.size_aware_iou", "size-aware IoU β"),
    ("beta_v.ciou", "cIoU β"), ("beta_v.success", "cIoU≥0.5 β"), ("beta_v.auc", "AUC β"),
    ("alpha_v.which_object", "which object α"), ("alpha_v.pointing", "pointing α"),
    ("alpha_v.size_aware_iou", "size-aware IoU α"),
    ("gradcam_v.which_object", "which object Grad-CAM"), ("gradcam_v.pointing", "pointing Grad-CAM"),
    ("gradcam_v.size_aware_iou", "size-aware IoU Grad-CAM"),
    ("probe_v", "probe video"), ("probe_a", "probe audio"), ("r_at_1", "R@1 v→a"),
    ("sync_2afc", "sync 2AFC"), ("sync_ceiling", "sync 2AFC ceiling"),
]  # fmt: skip
BASELINE_KEYS = {"beta_v.which_object": "which_object", "beta_v.pointing": "pointing", "beta_v.size_aware_iou": "size_aware_iou",
                 "beta_v.ciou": "ciou", "beta_v.success": "success", "beta_v.auc": "auc",
                 "gradcam_v.which_object": "which_object", "gradcam_v.pointing": "pointing",
                 "gradcam_v.size_aware_iou": "size_aware_iou"}  # fmt: skip


def _cell(stats: dict, key: str) -> str:
    """``mean ± std`` across seeds; ``n/a`` where the measure does not apply to the arm
    (None), ``–`` where it was not measured."""
    if key not in stats:
        return "–"
    stat = stats[key]
    if stat is None:
        return "n/a"
    if stat["n"] > 1:
        return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
    return f"{stat['mean']:.3f}"


def _other_boxes(results: dict) -> list[str]:
    """A paragraph where some arm's clips differ in length from the baselines' arm's."""
    other = results.get("other_boxes") or []
    if not other:
        return []
    return [
        f"Baselines, chance and ceilings are measured on the boxes of {results.get('baselines_arm')}'s "
        f"clips. {', '.join(other)} {'uses' if len(other) == 1 else 'use'} clips of another length, "
        "whose boxes over the clip differ (a longer clip's are larger, which favours the centre "
        "prior): compare those rows with a run of that arm alone (`--arms NAME`), whose "
        "baseline rows are its own.",
        "",
    ]


def table(results: dict) -> str:
    """The Markdown table: one row per arm (mean ± spread across seeds), then baselines,
    chance and the video-only probe's ceiling."""
    n_sync = results.get("n_sync_clips", 0)
    head = "| arm | " + " | ".join(
        f"{h} ({n_sync} clips)" if k == "sync_2afc" else h for k, h in COLUMNS
    ) + " |"  # fmt: skip
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, stats in results["arms"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(stats, k) for k, _ in COLUMNS) + " |")
    for name, figures in results["baselines"].items():
        cells = [
            f"{figures[BASELINE_KEYS[k]]:.3f}" if k in BASELINE_KEYS else "–" for k, _ in COLUMNS
        ]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    ch = results["chance"]
    chance = {"beta_v.pointing": ch["pointing"], "alpha_v.pointing": ch["pointing"],
              "alpha_v.which_object": ch["which_object"],
              "gradcam_v.pointing": ch["pointing"], "gradcam_v.which_object": ch["which_object"],
              "beta_v.which_object": ch["which_object"], "beta_v.pointing_mid": ch["pointing_mid"],
              "probe_v": ch["probe"], "probe_a": ch["probe"], "r_at_1": ch["r_at_1"],
              "sync_2afc": ch["sync_2afc"]}  # fmt: skip
    ceiling = {"probe_v": ch["probe_v_ceiling"]}
    for label, row in (("chance", chance), ("video probe ceiling", ceiling)):
        cells = [f"{row[k]:.3f}" if k in row else "–" for k, _ in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    cfg, m = results["config"], results["machine"]
    seeds = cfg["seeds"]
    out = [
        "# Results: does the pipeline learn? (`avprep evaluate`)",
        "",
        f"Command: `{results['command']}`  ",
        f"Commit: `{results['commit']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else ""),
        "",
        f"Benchmark: `avprep synth` with {cfg['videos']} training and {cfg['test_videos']} test videos "
        f"(seed {cfg['bench_seed']}), {results['n_classes']} classes"
        + (
            f" and {cfg['silent_classes']} more that never sound (the distractors')"
            if cfg.get("silent_classes")
            else ""
        )
        + ", "
        f"{cfg.get('frame_px', 112)} px frames, {cfg.get('object_px', 40)} px objects; every arm trained "
        f"{cfg['steps']} steps of {cfg['batch_size']} clips at a {cfg['crop_px']} px crop, "
        f"{seeds} seed{'s' if seeds > 1 else ''} (mean ± sample std across seeds). "
        f"Measured on {results['n_test_clips']} test clips (the middle clip of each test video); "
        f"probes fit on the {results['n_train_clips']} training clips.",
        "",
        table(results),
        "",
        "The truth box is the sounding object's box over the clip (the rectangle around its "
        "boxes at the clip's frames: a map summarizes the whole clip, in which an object moves "
        "up to ~37 px); 'pointing β, middle frame' scores the same peak against the box at the "
        "clip's middle frame alone. 'Which object β': the map's mean inside the sounding "
        "object's box exceeds its mean inside every silent object's (chance 1 / objects): "
        "whether the map tells which object sounds, however precisely it places it.",
        "",
        "β: the audio-guided map (beta_v); α: the vision-only map (alpha_v; trained only by "
        "cmac's consistency term). The true box's own row is the ceiling of each measure; "
        "with half the map flagged a clip's cIoU cannot exceed its box's area / half the frame "
        f"(on average {results['chance']['ciou_ceiling']:.3f} here), so only clips whose box "
        "covers a quarter of the frame can reach success at cIoU 0.5: the true box's row bounds "
        "it. lla has no vision-only map (its α is uniform by design): n/a.",
        "",
        "Grad-CAM (cmac_core/gradcam.py; added after the outcomes were registered): the "
        "region's share of the pair's similarity through the pooling the model was trained "
        "with (its heads never see one region's token, which β asks them about), "
        "<v_n − p, ∂s/∂p> for s = <head(p), z_a>; lla scores pairs with its sync head: n/a.",
        "",
        *_other_boxes(results),
        _probe_ceiling(results),
        "",
        f"Sync 2AFC: on the first {results.get('n_sync_clips', 0)} test clips, the clip's "
        "aligned audio against the same segment's audio shifted by at least 0.5 s; correct "
        "when the aligned one scores higher (lla: its sync head; the others: z_v·z_a). "
        "Chance 0.5. Its ceiling (per arm: the windows are the arm's clip length) is what a "
        "model that sees every bounce could score: only the sounding object's strikes tie the "
        "sound to the picture, so a pair whose two windows hold no strikes, or strikes at the "
        "same relative times, is a coin toss (cmac_core/sync_2afc.py).",
        "",
        "## Pre-registered outcomes, as measured",
        "",
        "| outcome | holds | measured |",
        "|---|---|---|",
    ]
    for c in results["checks"]:
        out.append(f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['measured']} |")
    if lines := paired.markdown(results.get("paired", {})):
        out += ["", *lines]
    finals = sorted({k for s in results["arms"].values() for k in s if k.startswith("final.")})
    if finals:
        out += ["", "## Last training step (metrics.jsonl)", "",
                "| arm | " + " | ".join(k[6:] for k in finals) + " |", "|" + "---|" * (len(finals) + 1)]  # fmt: skip
        for name, stats in results["arms"].items():
            if any(k in stats for k in finals):
                out.append(f"| {name} | " + " | ".join(_cell(stats, k) for k in finals) + " |")
    out += ["", "## Where the time went (seconds spent on each stage, over every run of the command)", "",
            "| stage | s |", "|---|---|"]  # fmt: skip
    out += [f"| {k} | {v} |" for k, v in results["timings_s"].items()]
    out += ["", "![training curves](results_curves.png)", "",
            "Training loss against the step: a panel per trained arm, all on one scale, a line "
            "per seed.", "", "![maps](results_maps.png)", "",
            "The first seed's maps on the first test clips: a row per arm and map (β, α, "
            "Grad-CAM), each blended over the frame in warm colours scaled to its own maximum "
            "(no shared scale); green: the sounding object's box over the clip.", ""]  # fmt: skip
    return "\n".join(out)


def _probe_ceiling(results: dict) -> str:
    """What bounds the video probe: which classes a clip shows that could be sounding."""
    ceiling = results["chance"]["probe_v_ceiling"]
    if results["config"].get("silent_classes"):
        return ("Video probe ceiling: the distractors' classes never sound (`--silent-classes`), "
                "so the one object of a class that sounds is the sounding one and a probe on video "
                f"features can name its class from sight: the ceiling is {ceiling:.3f}. So can the "
                "vision-only map α tell which object sounds.")  # fmt: skip
    return (f"Video probe ceiling: every test clip shows objects of {_visible(results)} classes and "
            "nothing in the video alone says which one sounds, so a probe on video features can "
            "name the sounding class at best 1 time in that many: the mean of 1 / (distinct "
            f"classes in the clip) is {ceiling:.3f}, however the video features were trained. The same "
            "bounds the vision-only map α: it can find the objects, not which one sounds ('which "
            "object α' at chance; `--silent-classes` makes a benchmark where sight can tell).")  # fmt: skip


def _visible(results: dict) -> str:
    """``"2"``, or ``"1 to 3"`` where clips differ (from the ceiling's per-clip counts)."""
    lo, hi = results["chance"].get("visible_classes_range", [None, None])
    return "several" if lo is None else (f"{lo}" if lo == hi else f"{lo} to {hi}")


def write_report(results: dict, runs: dict, report_dir: Path) -> Path:
    """Write the four files into ``report_dir``; returns the Markdown's path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = {a: {s: r.get("metrics", []) for s, r in seeds.items()} for a, seeds in runs.items()}
    pictures.curves(metrics).save(report_dir / "results_curves.png")
    first = next(iter(next(iter(runs.values())).values()))["test"]
    rows = {}
    for name, seeds in runs.items():
        test = seeds[min(seeds)]["test"]
        rows[f"{name} beta_v"] = test["beta_v"]  # (the bitmap font has no Greek letters)
        if name not in ("avid", "random_init") and arm(name).has_alpha:
            rows[f"{name} alpha_v"] = test["alpha_v"]
        if name in ("avid", "cmac") and "gradcam_v" in test:
            rows[f"{name} Grad-CAM"] = test["gradcam_v"]
    k = len(first["frames"])
    pictures.map_grid(first["frames"], first["boxes"][:k], rows).save(
        report_dir / "results_maps.png"
    )
    _write(report_dir / "results.json", json.dumps(results, indent=1))
    path = report_dir / "RESULTS.md"
    _write(path, markdown(results))
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
