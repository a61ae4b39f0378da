"""Frozen features of every sample of a benchmark split, with its ground truth.

One clip per sample: the middle window (as ``avprep localize`` and ``EvalClips`` with
one clip choose it), the whole frame resized to the model's crop size. Per clip: the
embeddings ``z_v, z_a`` ``[D]``, the pooled backbone features ``f_v, f_a`` ``[C]``
(``Frozen.embed``), optionally the maps ``beta_v``, ``alpha_v`` and ``gradcam_v`` (not lla)
``[H, W]`` at the stored frame's size (``cmac_core.localize.attention_maps``), the sounding class, the number of
distinct classes among the clip's objects (``visible_classes``), and the truth in pixels of
the map: ``boxes``, the sounding object's box over the clip (the rectangle around its boxes
at the clip's frames: the map summarizes the whole clip, in which an object moves up to
~37 px), ``boxes_mid``, its box at the window's middle frame alone, and
``distractor_boxes [N, D, 4]``, each silent object's box over the clip.

Imports ``avprep.truth`` (standard library only, like ``avprep.schema``): the one other
avprep module cmac_core reads, because the benchmark's ground truth is defined there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from avprep import truth
from cmac_core.config import PretrainConfig
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.damage import ShardSamples, decode_or_marker, is_marker
from cmac_core.data.evaluation import EvalClips
from cmac_core.data.shards import resolve
from cmac_core.data.stages import SafeDecode, decode_jpegs
from cmac_core.embed.frozen import Frozen
from cmac_core.errors import CmacError
from cmac_core.localize import attention_maps
from cmac_core.models import build

VECTORS = ("z_v", "z_a", "f_v", "f_a")
MAPS = ("beta_v", "alpha_v", "gradcam_v")  # gradcam_v: models scoring pooled features (not lla)
TRUTH = (
    "keys",
    "classes",
    "visible_classes",
    "boxes",
    "boxes_mid",
    "distractor_boxes",
)  # what every feature file holds


class FeatureError(CmacError):
    """A benchmark sample that cannot be evaluated; one line."""


def visible_classes(gt: dict) -> int:
    """Distinct classes among a clip's objects that could be the sounding one: the sounding
    class and its distractors' (``avprep.truth``: ``class_index``, ``distractors[*].class_index``)
    but not those of classes that never sound (``>= n_classes``, ``avprep synth --silent-classes``)."""
    classes = {int(gt["class_index"]), *(int(d["class_index"]) for d in gt["distractors"])}
    return len({c for c in classes if c < int(gt["n_classes"])})


def clip_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The rectangle around pixel boxes ``(c0, r0, c1, r1)``: where an object was during a clip."""
    c0, r0, c1, r1 = zip(*boxes, strict=True)
    return min(c0), min(r0), max(c1), max(r1)


def box_over(meta: dict, times_s: list[float], size_wh: tuple[int, int], *,
             distractor: int | None = None) -> tuple[int, int, int, int]:  # fmt: skip
    """The sounding object's (or distractor ``distractor``'s) box over the frames at
    ``times_s``, in pixels of a ``size_wh`` map: ``clip_box`` of its box at each."""
    return clip_box([truth.box_pixels(truth.box_at(meta, t, distractor=distractor), *size_wh)
                     for t in times_s])  # fmt: skip


def random_init(cfg: PretrainConfig, *, seed: int, device: torch.device) -> Frozen:
    """The untrained model of ``cfg`` (weights drawn with ``seed``), frozen."""
    torch.manual_seed(seed)
    model = build("cmac", cfg.model).to(device).eval()
    return Frozen(model, cfg, {"method": "random_init"}, attention=cfg.loss.method == "cmac")


def extract(frozen: Frozen, shards: str | Path, *, maps: bool, batch_size: int = 32,
            keep_frames: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Every sample of ``shards`` in key order -> arrays: ``keys``, ``classes [N]``,
    ``visible_classes [N]``, ``boxes [N, 4]`` (c0, r0, c1, r1 pixels), ``VECTORS`` ``[N, *]``, with ``maps`` also
    ``MAPS`` ``[N, H, W]``, and the first ``keep_frames`` middle frames
    ``frames [k, H, W, 3]`` (for pictures)."""
    c = frozen.cfg.data
    device = next(frozen.model.parameters()).device
    clips = EvalClips(c, clips_per_segment=1)
    rows: dict[str, list] = {k: [] for k in (*TRUTH, "frames", *MAPS)}
    videos, specs, vectors = [], [], {k: [] for k in VECTORS}

    def flush() -> None:
        if videos:
            out = frozen.embed(torch.cat(videos).to(device), torch.cat(specs).to(device))
            for name, v in zip(VECTORS, out, strict=True):
                vectors[name].append(v.float().cpu().numpy())
            videos.clear()
            specs.clear()

    samples = wds.DataPipeline(wds.SimpleShardList(resolve(str(shards))), ShardSamples())
    for raw in sorted(samples, key=lambda r: r.get("__key__", "")):
        s = decode_or_marker(raw, SafeDecode())
        if is_marker(s):
            raise FeatureError(f"{s['__url__']}: damaged benchmark sample ({s['__error__']})")
        meta, n = s["meta"], len(s["jpegs"])
        try:
            gt = truth.truth_of(meta)
        except ValueError as e:
            raise FeatureError(f"sample {s['key']}: {e}") from e
        w = choose_window(meta, c.clip_frames, None, first_frame=max(0, (n - c.clip_frames) // 2),
                          audio_seconds=c.audio_seconds)  # fmt: skip
        idx = frame_indices(w, n)
        middle = idx[len(idx) // 2]
        frames = decode_jpegs(s["key"], [s["jpegs"][i] for i in idx])
        h, wd = frames.shape[1:3]
        times = [meta["frame_times"][i] for i in idx]
        rows["keys"].append(s["key"])
        rows["classes"].append(int(gt["class_index"]))
        rows["visible_classes"].append(visible_classes(gt))
        rows["boxes"].append(box_over(meta, times, (wd, h)))
        rows["boxes_mid"].append(
            truth.box_pixels(truth.box_at(meta, meta["frame_times"][middle]), wd, h)
        )
        rows["distractor_boxes"].append(
            [box_over(meta, times, (wd, h), distractor=d) for d in range(len(gt["distractors"]))]
        )
        if len(rows["frames"]) < keep_frames:
            rows["frames"].append(frames[len(idx) // 2])
        if maps:
            m = attention_maps(frozen, frames, cut_columns(s["spec"], w), meta)
            for name in MAPS:
                if name in m:
                    rows[name].append(m[name])
        one = clips(s)
        videos.append(one["video"])
        specs.append(one["spec"])
        if len(videos) == batch_size:
            flush()
    flush()
    if not rows["keys"]:
        raise FeatureError(f"no samples in {shards}")
    out = {"keys": np.array(rows["keys"]), "classes": np.array(rows["classes"]),
           "visible_classes": np.array(rows["visible_classes"], np.int32),
           "boxes": np.array(rows["boxes"], np.int32),
           "boxes_mid": np.array(rows["boxes_mid"], np.int32),
           "distractor_boxes": np.array(rows["distractor_boxes"], np.int32).reshape(len(rows["keys"]), -1, 4)}  # fmt: skip
    out.update({k: np.concatenate(v) for k, v in vectors.items()})
    for name in ("frames", *MAPS):
        if rows[name]:
            out[name] = np.stack(rows[name])
    return out


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as ``.npz``, written under a temporary name and renamed."""
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
