"""Where do a model's region tokens differ along the direction its pair score reads? (issue 12;
a method diagnostic, not a speed benchmark: docs/RESULTS.md, the silent-classes benchmark)

Grad-CAM scores region ``n`` as ``<v_n - p, g>``, ``p`` the pooled feature and ``g = ds/dp``
for the pair's score ``s = <head(p), z_a>`` (``cmac_core.gradcam``). For the middle clip of
each test video this prints how far the tokens stray from ``p`` (``|v_n - p| / |p|``,
averaged) and the raw score, scaled to a cosine (``/ (|g| * mean |v_n - p|)``), averaged
over the cells whose centre lies in the sounding object's box over the clip, in a silent
object's, and elsewhere. Positive on the sounding object and negative on the silent one:
the score reads the difference between the objects; near zero everywhere: the tokens
differ in directions the score does not read.

python benchmarks/probe_gradcam_cells.py RUN_DIR TEST_SHARDS [--clips 100]
(RUN_DIR: an ``avprep pretrain`` run folder with ``last.pt``, e.g. EVAL/runs/avid-s0;
TEST_SHARDS: EVAL/shards/test of the same ``avprep evaluate`` folder)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import webdataset as wds

from avprep import truth
from cmac_core.data.augment import MEAN, STD, spec_norm, spec_to_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.damage import ShardSamples, decode_or_marker
from cmac_core.data.shards import resolve
from cmac_core.data.stages import SafeDecode, decode_jpegs
from cmac_core.embed.frozen import Frozen
from cmac_core.evaluate.features import box_over


def clip_scores(frozen: Frozen, raw: dict) -> tuple[float, dict[str, list[float]]]:
    """One sample's token spread and its cells' scaled Grad-CAM scores by kind."""
    model, c = frozen.model, frozen.cfg.data
    s = decode_or_marker(raw, SafeDecode())
    meta, n = s["meta"], len(s["jpegs"])
    w = choose_window(meta, c.clip_frames, None, first_frame=max(0, (n - c.clip_frames) // 2),
                      audio_seconds=c.audio_seconds)  # fmt: skip
    idx = frame_indices(w, n)
    frames = decode_jpegs(s["key"], [s["jpegs"][i] for i in idx])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)  # [T, 3, H, W]
    if min(x.shape[-2:]) != c.crop_px:
        raise SystemExit(f"frames of {min(x.shape[-2:])} px, crop {c.crop_px}: run on whole frames")
    video = ((x.permute(1, 0, 2, 3) - MEAN) / STD).unsqueeze(0)
    mean, std = spec_norm(c, meta)
    audio = spec_to_tensor(cut_columns(s["spec"], w), None, mean=mean, std=std).unsqueeze(0)
    with torch.no_grad():
        feats = model(video, audio)
        _, z_a = model.embed(feats, attention=frozen.attention)
    tokens = feats["v_tokens"][0].float()  # [S, C]
    with torch.enable_grad():
        pooled, _ = model.pool({**feats, "v_tokens": tokens[None]}, attention=frozen.attention)
        pooled = pooled.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((model.video_head(pooled) * z_a).sum(), pooled)
    dev = tokens - pooled.detach()[0]
    cam = (dev @ g[0]) / (g[0].norm() * dev.norm(dim=1).mean())
    h, wd = frames.shape[1:3]
    times = [meta["frame_times"][i] for i in idx]
    box = box_over(meta, times, (wd, h))
    others = [box_over(meta, times, (wd, h), distractor=d)
              for d in range(len(truth.truth_of(meta)["distractors"]))]  # fmt: skip
    gh, gw = (int(v) for v in feats["grid_hw"])
    enc = model.video
    kinds: dict[str, list[float]] = {"sounding": [], "silent": [], "background": []}
    for k in range(gh * gw):
        r, col = divmod(k, gw)
        cy, cx = enc.STRIDE_PX * r + enc.ORIGIN_PX, enc.STRIDE_PX * col + enc.ORIGIN_PX

        def inside(b, cx=cx, cy=cy) -> bool:
            return b[0] <= cx < b[2] and b[1] <= cy < b[3]

        kind = "sounding" if inside(box) else "silent" if any(map(inside, others)) else "background"
        kinds[kind].append(float(cam[k]))
    return float(dev.norm(dim=1).mean() / pooled.detach()[0].norm()), kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("test_shards")
    ap.add_argument("--clips", type=int, default=100)
    args = ap.parse_args()
    frozen = Frozen.load(f"{args.run_dir}/last.pt", torch.device("cpu"))
    samples = wds.DataPipeline(wds.SimpleShardList(resolve(args.test_shards)), ShardSamples())
    spread, kinds = [], {"sounding": [], "silent": [], "background": []}
    for raw in sorted(samples, key=lambda r: r["__key__"])[: args.clips]:
        one, cells = clip_scores(frozen, raw)
        spread.append(one)
        for k, v in cells.items():
            kinds[k] += v
    print(f"{args.run_dir}: token spread |v_n - p| / |p| = {np.mean(spread):.3f}; "
          "Grad-CAM raw score (cosine-scaled) by cell: "
          + ", ".join(f"{k} {np.mean(v):+.3f} (n={len(v)})" for k, v in kinds.items()))  # fmt: skip


if __name__ == "__main__":
    main()
