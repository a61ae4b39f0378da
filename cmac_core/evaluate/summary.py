"""From features to figures: every measure per arm and seed, mean and spread across seeds,
the baselines without training (centre prior, random maps), the ceilings (the true box;
a video-only class probe, ``probes.video_probe_ceiling``), and the outcomes the issue
registered before anything was measured, each checked against the figures.

An arm without a vision-only map (lla: its alpha_v is uniform) has its alpha measures
as ``None`` (not applicable) in ``arms``, never a figure of a uniform map; likewise its
Grad-CAM measures (``cmac_core.gradcam``: lla does not score pairs by pooled features).

Spread is the sample standard deviation across seeds (0 with one seed). "Near chance"
is at most ``NEAR_CHANCE`` (absolute) above the measure's chance level: the claim is
that these arms show no learning, and a figure below chance shows none either.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from cmac_core.evaluate import localization as loc
from cmac_core.evaluate.arms import arm
from cmac_core.evaluate.paired import paired
from cmac_core.evaluate.probes import probe_accuracy, video_probe_ceiling
from cmac_core.evaluate.retrieval import recall_at_1

NEAR_CHANCE = 0.1
LOC = ("pointing", "size_aware_iou", "ciou", "success", "auc")


def measure_run(run: dict, n_classes: int, *, alpha: bool = True) -> dict[str, float]:
    """One trained (or random-init) model's figures from its train and test features and
    its 2AFC counts (``run["sync"]``); no alpha measures without ``alpha``."""
    train, test = run["train"], run["test"]
    boxes = [tuple(b) for b in test["boxes"]]
    out: dict[str, float] = {}
    names = ("beta_v", "alpha_v") if alpha else ("beta_v",)
    for name in (*names, "gradcam_v") if "gradcam_v" in test else names:
        for k, v in loc.measure(list(test[name]), boxes).items():
            out[f"{name}.{k}"] = v
        out[f"{name}.pointing_mid"] = float(np.mean(
            [loc.pointing(m, tuple(b)) for m, b in zip(test[name], test["boxes_mid"], strict=True)]
        ))  # fmt: skip
        out[f"{name}.which_object"] = float(np.mean([
            loc.which_object(m, tuple(b), [tuple(o) for o in others])
            for m, b, others in zip(test[name], test["boxes"], test["distractor_boxes"], strict=True)
        ]))  # fmt: skip
    for modality in ("v", "a"):
        out[f"probe_{modality}"] = probe_accuracy(train[f"f_{modality}"], train["classes"],
                                                  test[f"f_{modality}"], test["classes"],
                                                  n_classes=n_classes)  # fmt: skip
    out["r_at_1"] = recall_at_1(test["z_v"], test["z_a"])
    sync = run.get("sync")
    if sync and sync["clips"]:
        out["sync_2afc"] = sync["correct"] / sync["clips"]
        if sync.get("decidable") is not None:  # the truth's bound on these pairs (sync_2afc.py)
            out["sync_ceiling"] = (
                sync["decidable"] + 0.5 * (sync["clips"] - sync["decidable"])
            ) / sync["clips"]
    last = run.get("metrics") or [{}]
    for k, v in last[-1].items():
        if k == "loss" or k == "nce" or k.startswith("entropy"):
            out[f"final.{k}"] = float(v)
    return out


def baselines(test: dict, *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Maps with no model: the centre prior, seeded random maps (chance), and the box
    itself (the ceiling of every measure; for cIoU at most box area / half the frame)."""
    boxes = [tuple(b) for b in test["boxes"]]
    shape = test["beta_v"].shape[1:]
    rng = np.random.default_rng(seed)
    prior = loc.centre_prior(shape)
    oracle = [loc.box_mask(b, shape).astype(np.float32) + rng.random(shape) * 1e-3 for b in boxes]
    maps = {"centre_prior": [prior] * len(boxes),
            "random_maps": [rng.random(shape) for _ in boxes], "true_box": oracle}  # fmt: skip
    out = {}
    for name, ms in maps.items():
        out[name] = loc.measure(ms, boxes)
        out[name]["which_object"] = float(np.mean([
            loc.which_object(m, b, [tuple(o) for o in others])
            for m, b, others in zip(ms, boxes, test["distractor_boxes"], strict=True)
        ]))  # fmt: skip
    return out


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{measure: {"mean", "std", "n"}}`` across seeds."""
    names = sorted(set().union(*per_seed))
    out = {}
    for name in names:
        values = np.array([s[name] for s in per_seed if name in s], float)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[name] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return out


def chance(test: dict, n_classes: int) -> dict[str, float]:
    """Chance of each measure, and the ceilings no model can pass: ``ciou_ceiling``,
    ``probe_v_ceiling`` (a video-only probe, ``probes.video_probe_ceiling``)."""
    boxes = [tuple(b) for b in test["boxes"]]
    shape = test["beta_v"].shape[1:]
    area = float(np.mean([loc.box_mask(b, shape).mean() for b in boxes]))
    mid = float(np.mean([loc.box_mask(tuple(b), shape).mean() for b in test["boxes_mid"]]))
    return {"pointing": area, "pointing_mid": mid,
            "which_object": 1 / (1 + test["distractor_boxes"].shape[1]), "probe": 1 / n_classes, "r_at_1": 1 / len(boxes), "sync_2afc": 0.5,
            "ciou_ceiling": float(np.mean([loc.ciou_ceiling(b, shape) for b in boxes])),
            "probe_v_ceiling": video_probe_ceiling(test["visible_classes"]),
            "visible_classes_range": [int(test["visible_classes"].min()),
                                      int(test["visible_classes"].max())]}  # fmt: skip


def checks(arms: dict, base: dict, ch: dict, *, lla_base: dict | None = None) -> list[dict]:
    """The pre-registered outcomes, each ``{"claim", "holds", "measured"}``. ``lla_base``:
    the baselines on lla's own clips where their boxes differ from the first arm's."""
    out = []

    def add(claim: str, holds: bool, measured: str) -> None:
        out.append({"claim": claim, "holds": bool(holds), "measured": measured})

    def m(a: str, k: str) -> float:
        return arms[a][k]["mean"]

    for a in ("avid", "cmac"):
        if a not in arms:
            continue
        add(f"{a}: pointing (beta_v) >= 0.8", m(a, "beta_v.pointing") >= 0.8,
            f"{m(a, 'beta_v.pointing'):.3f}")  # fmt: skip
        if arms[a].get("gradcam_v.pointing"):  # added after the registration (cmac_core/gradcam.py)
            add(f"{a}: pointing (Grad-CAM) >= 0.8 (map added after registering)",
                m(a, "gradcam_v.pointing") >= 0.8, f"{m(a, 'gradcam_v.pointing'):.3f}")  # fmt: skip
        for mod, what in (("v", "video"), ("a", "audio")):
            note = (f" (a video-only probe's ceiling here: {ch['probe_v_ceiling']:.3f})"
                    if mod == "v" and "probe_v_ceiling" in ch else "")  # fmt: skip
            add(f"{a}: class probe on {what} features >= 0.65", m(a, f"probe_{mod}") >= 0.65,
                f"{m(a, f'probe_{mod}'):.3f}{note}")  # fmt: skip
        if "random_init" in arms:
            spread = max(arms[a]["beta_v.size_aware_iou"]["std"],
                         arms["random_init"]["beta_v.size_aware_iou"]["std"])  # fmt: skip
            best = max(
                base["centre_prior"]["size_aware_iou"], m("random_init", "beta_v.size_aware_iou")
            )
            gap = m(a, "beta_v.size_aware_iou") - best
            add(f"{a}: size-aware IoU beats centre prior and random init by > 2x seed spread",
                gap > 2 * spread, f"gap {gap:+.3f}, spread {spread:.3f}")  # fmt: skip
    for a in ("random_init", "shuffled_audio"):
        if a not in arms:
            continue
        far = {k: m(a, key) - c for k, key, c in (
            ("pointing", "beta_v.pointing", ch["pointing"]), ("probe_v", "probe_v", ch["probe"]),
            ("probe_a", "probe_a", ch["probe"]), ("r_at_1", "r_at_1", ch["r_at_1"]))}  # fmt: skip
        if arms[a].get("gradcam_v.pointing"):
            far["pointing_gradcam"] = m(a, "gradcam_v.pointing") - ch["pointing"]
        add(f"{a}: near chance (at most {NEAR_CHANCE} above) on every measure",
            all(v <= NEAR_CHANCE for v in far.values()),
            ", ".join(f"{k} {v:+.3f}" for k, v in far.items()) + " from chance")  # fmt: skip
    gap = base["centre_prior"]["pointing"] - ch["pointing"]
    add(f"centre prior: pointing near chance (at most {NEAR_CHANCE} above)", gap <= NEAR_CHANCE,
        f"{base['centre_prior']['pointing']:.3f} ({gap:+.3f} from chance)")  # fmt: skip
    if "cmac" in arms and "avid" in arms:
        d = m("cmac", "beta_v.size_aware_iou") - m("avid", "beta_v.size_aware_iou")
        add("goal, CMAC adds value: beta size-aware IoU >= avid's + 0.05", d >= 0.05, f"{d:+.3f}")
        add("goal, CMAC adds value: alpha pointing >= 0.6", m("cmac", "alpha_v.pointing") >= 0.6,
            f"{m('cmac', 'alpha_v.pointing'):.3f}")  # fmt: skip
        ent = arms["cmac"].get("final.entropy_alpha_v")
        if ent is not None:
            add("goal, CMAC adds value: entropy of alpha < 0.8 log S", ent["mean"] < 0.8,
                f"{ent['mean']:.3f} log S (last training step)")  # fmt: skip
    if "lla" in arms:  # issue 13's expectations, written beside the table whatever it says
        if arms["lla"].get("sync_2afc") is not None:
            add("goal, lla: synchronization 2AFC >= 0.9", m("lla", "sync_2afc") >= 0.9,
                f"{m('lla', 'sync_2afc'):.3f} (chance 0.5)")  # fmt: skip
        prior = (lla_base or base)["centre_prior"]["pointing"]
        add("goal, lla: pointing (beta_v) above the centre prior's, on lla's clips",
            m("lla", "beta_v.pointing") > prior,
            f"{m('lla', 'beta_v.pointing'):.3f} vs {prior:.3f}")  # fmt: skip
        add("goal, lla: class probe on video features well above chance (>= 2x chance)",
            m("lla", "probe_v") >= 2 * ch["probe"],
            f"{m('lla', 'probe_v'):.3f} (chance {ch['probe']:.3f})")  # fmt: skip
    return out


def machine(device: torch.device) -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (proc.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


def summarize(cfg, runs: dict, *, timings: dict, command: str, device: torch.device) -> dict:
    """``results.json``'s content from every run's features."""
    first = next(iter(next(iter(runs.values())).values()))
    n_classes = int(first["test"]["classes"].max() + 1)
    n_classes = max(n_classes, int(first["train"]["classes"].max() + 1))
    per_seed = {
        a: [measure_run(r, n_classes, alpha=arm(a).has_alpha) for _, r in sorted(s.items())]
        for a, s in runs.items()
    }
    arms = {a: aggregate(v) for a, v in per_seed.items()}
    for a, stats in arms.items():
        if not arm(a).has_alpha:
            stats.update({f"alpha_v.{k}": None for k in (*LOC, "pointing_mid", "which_object")})
        if "gradcam_v.pointing" not in stats:  # lla scores pairs with its sync head
            stats.update({f"gradcam_v.{k}": None for k in (*LOC, "which_object")})
    syncs = [r["sync"]["clips"] for s in runs.values() for r in s.values() if r.get("sync")]
    base = baselines(first["test"], seed=cfg.bench_seed)
    ch = chance(first["test"], n_classes)
    # Baselines, chance and ceilings are the first arm's boxes; an arm whose clips are of
    # another length (lla) has other boxes over its clip, which those rows do not describe.
    other_boxes = [a for a, s in runs.items()
                   if any(not np.array_equal(r["test"]["boxes"], first["test"]["boxes"]) for r in s.values())]  # fmt: skip
    lla_base = (baselines(next(iter(runs["lla"].values()))["test"], seed=cfg.bench_seed)
                if "lla" in other_boxes else None)  # fmt: skip
    return {"command": command, "commit": git_commit(), "machine": machine(device),
            "config": cfg.to_dict(), "n_classes": n_classes, "n_test_clips": len(first["test"]["keys"]),
            "n_train_clips": len(first["train"]["keys"]), "n_sync_clips": min(syncs, default=0),
            "chance": ch, "baselines": base, "baselines_arm": next(iter(runs)), "other_boxes": other_boxes,
            "arms": arms, "per_seed": per_seed, "paired": paired(per_seed),
            "checks": checks(arms, base, ch, lla_base=lla_base),
            "timings_s": timings}  # fmt: skip
