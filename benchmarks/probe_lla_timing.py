"""Do an lla model's encoder tokens carry *when* the sound happens? (issue 13; a method
diagnostic, not a speed benchmark: docs/method.md, "Correspondence is learned, timing is not")

On `avprep synth` shards (ground truth of the sounding object's strikes and boxes), each
segment is cut into 8-frame clips; every visual time token (the encoder's map at the
sounding object's grid cell, or averaged over space with --mean) is labelled "the object
bounces (strikes) within this token's time", every audio time token (averaged over
frequency) "a strike falls in this token's window". A linear probe per modality, trained
on 3/4 of the videos (the evaluation's probe), scored by ROC AUC on the rest (0.5: no
timing in the tokens).

python benchmarks/probe_lla_timing.py SHARD_DIR CKPT [CKPT ...] [--random] [--mean]
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from avprep import truth
from avprep.read_sample import decode_sample
from cmac_core.data.augment import finish_video, spec_norm, spec_to_tensor
from cmac_core.embed.frozen import Frozen
from cmac_core.evaluate.probes import probe_scores, roc_auc
from cmac_core.models.coattention import LLAModel


def tokens(model, cfg, frames, spec, meta, *, on_object: bool):
    """``(visual rows, audio rows)``: (feature, label, video key) per time token."""
    t_clip = cfg.data.clip_frames
    times = np.asarray(meta["frame_times"])
    fps = 1.0 / float(np.median(np.diff(times)))
    hop, s0 = meta["spec"]["hop_s"], meta["spec_start_s"]
    onsets = np.asarray(truth.truth_of(meta)["onsets_s"])
    mean, std = spec_norm(cfg.data, meta)
    rows_v, rows_a = [], []
    for c0 in range(0, len(times) - t_clip + 1, t_clip):
        t0, length = times[c0], t_clip / fps
        j0, n = round((t0 - s0) / hop), round(length / hop)
        if j0 < 0 or j0 + n > spec.shape[1]:
            continue
        x = torch.from_numpy(frames[c0 : c0 + t_clip]).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(cfg.data.crop_px,) * 2, mode="bilinear", antialias=True)
        v = model.video(finish_video(x.clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3)[None]))
        a = model.audio(spec_to_tensor(spec[:, j0 : j0 + n], None, mean=mean, std=std)[None])
        gh, gw = v.shape[3], v.shape[4]
        for k in range(v.shape[2]):
            lo = t0 + k * length / v.shape[2]
            hi = lo + length / v.shape[2]
            if on_object:
                x0, y0, x1, y1 = truth.box_at(meta, lo)
                gy, gx = min(gh - 1, int((y0 + y1) / 2 * gh)), min(gw - 1, int((x0 + x1) / 2 * gw))
                feat = v[0, :, k, gy, gx]
            else:
                feat = v[0, :, k].mean((1, 2))
            rows_v.append(
                (feat.numpy(), float(((onsets >= lo) & (onsets < hi)).any()), meta["key"])
            )
        at = a.mean(2)[0]  # [C, m]
        for k in range(at.shape[1]):
            lo = t0 + k * length / at.shape[1]
            hi = lo + length / at.shape[1]
            label = float(((onsets >= lo - hop * 2) & (onsets < hi)).any())
            rows_a.append((at[:, k].numpy(), label, meta["key"]))
    return rows_v, rows_a


def probe_auc(rows) -> tuple[float, float]:
    """Held-out ROC AUC of the evaluation's linear probe (``cmac_core.evaluate.probes``)
    fit on 3/4 of the videos, and the positive rate."""
    held = set(sorted({r[2] for r in rows})[::4])
    te = np.array([r[2] in held for r in rows])
    x = np.stack([r[0] for r in rows])
    y = np.array([r[1] for r in rows], dtype=np.int64)
    scores = probe_scores(x[~te], y[~te], x[te], n_classes=2)
    return roc_auc(scores[:, 1] - scores[:, 0], y[te] == 1), float(y[~te].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", help="a folder of avprep synth shards (the training split)")
    ap.add_argument("ckpts", nargs="+", help="lla checkpoints")
    ap.add_argument(
        "--random", action="store_true", help="also a random-init model of the first's config"
    )
    ap.add_argument("--mean", action="store_true", help="visual tokens averaged over space")
    args = ap.parse_args()
    torch.set_num_threads(1)
    samples = [decode_sample(s) for s in wds.WebDataset(sorted(glob.glob(f"{args.shards}/*.tar")),
                                                        shardshuffle=False)]  # fmt: skip
    models = [(c, Frozen.load(c, torch.device("cpu"))) for c in args.ckpts]
    if args.random:
        torch.manual_seed(0)
        models.insert(0, ("random init", Frozen.load(args.ckpts[0], torch.device("cpu"))))
        models[0][1].model = LLAModel(models[0][1].cfg.model)
    print(
        f"{len(samples)} segments; visual tokens {'over space' if args.mean else 'at the object'}"
    )
    for name, frozen in models:
        rows_v, rows_a = [], []
        with torch.no_grad():
            for frames, spec, meta in samples:
                v, a = tokens(
                    frozen.model.eval(), frozen.cfg, frames, spec, meta, on_object=not args.mean
                )
                rows_v += v
                rows_a += a
        (auc_v, pos_v), (auc_a, pos_a) = probe_auc(rows_v), probe_auc(rows_a)
        print(f"{name}: visual AUC {auc_v:.3f} (positives {pos_v:.2f}), "
              f"audio AUC {auc_a:.3f} (positives {pos_a:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
