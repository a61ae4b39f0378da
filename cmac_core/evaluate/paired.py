"""Each arm against the contrastive baseline, seed by seed.

Arms trained with the same seed start from the same weights (avid and the cmac arms build
one architecture after ``torch.manual_seed(seed)``) and read the same stream (the
benchmark's shards have one writer), so their difference on a seed is the loss's doing:
``paired`` takes ``arm - avid`` per seed and reports its mean and standard error
(sample std / sqrt(seeds)). With 6 seeds (docs/RESULTS.md) the arms' own spreads were
0.06-0.13 in pointing while their paired differences were known to 0.015-0.045: the
comparison the "CMAC adds value" goals ask for needs this, not two means side by side.
"""

from __future__ import annotations

import numpy as np

AGAINST = "avid"
COLUMNS = (("beta_v.pointing", "pointing β"), ("beta_v.size_aware_iou", "size-aware IoU β"),
           ("gradcam_v.pointing", "pointing Grad-CAM"),
           ("gradcam_v.size_aware_iou", "size-aware IoU Grad-CAM"))  # fmt: skip


def paired(per_seed: dict[str, list[dict]], *, against: str = AGAINST) -> dict[str, dict]:
    """``{arm: {measure: {"mean", "se", "n"}}}`` of ``arm - against`` over the seeds both
    have (``se`` None with one seed); arms without the measure (lla's Grad-CAM) skip it.
    Empty without ``against`` or with only it."""
    base = per_seed.get(against)
    if not base:
        return {}
    out = {}
    for name, seeds in per_seed.items():
        if name in (against, "random_init"):
            continue
        row = {}
        for k, _ in COLUMNS:
            d = np.array([s[k] - b[k] for s, b in zip(seeds, base, strict=False) if s.get(k) is not None
                          and b.get(k) is not None], float)  # fmt: skip
            if len(d):
                se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
                row[k] = {"mean": float(d.mean()), "se": se, "n": len(d)}
        if row:
            out[name] = row
    return out


def markdown(diffs: dict[str, dict], *, against: str = AGAINST) -> list[str]:
    """The section's lines (none when there is nothing to compare)."""
    if not diffs:
        return []
    n = max(v["n"] for row in diffs.values() for v in row.values())
    out = [f"## Each arm minus {against}, seed by seed", "",
           f"The same seed gives two arms the same initial weights and the same stream of clips "
           f"(n = {n} seeds): mean ± standard error of the difference.", "",
           "| arm | " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]  # fmt: skip
    for name, row in diffs.items():
        out.append(
            f"| {name} − {against} | " + " | ".join(_cell(row.get(k)) for k, _ in COLUMNS) + " |"
        )
    return out


def _cell(v: dict | None) -> str:
    if v is None:
        return "–"
    return f"{v['mean']:+.3f}" + ("" if v["se"] is None else f" ± {v['se']:.3f}")
