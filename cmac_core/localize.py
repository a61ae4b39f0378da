"""Where is the sound? Audio-guided visual attention maps, saved for people to browse.

For each segment: the middle clip, whole frame (short side resized to the
training crop size, no crop), goes through the frozen model; the map is CMAC's
target attention beta_v(s) = softmax_s(<phi_v(v_s), z_a> / tau_b), where z_a is
the same clip's audio embedding. It is upsampled to the stored frame and saved
as ``{key}.npy`` (float32 [H, W], sums to 1 over the region grid before
upsampling) and ``{key}.png`` (a heat overlay on the middle frame), with an
``index.html`` grid of all of them.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from cmac_core import distributed
from cmac_core.data.augment import MEAN, STD, spec_to_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.evaluation import ShardSamples, decode_or_marker
from cmac_core.data.shards import resolve
from cmac_core.data.stages import SafeDecode
from cmac_core.embed import Frozen
from cmac_core.losses import cross_modal_target

# A perceptual "inferno"-like ramp: dark purple -> red -> yellow.
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)


@dataclass
class LocalizeReport:
    out_dir: Path
    maps: int  # all ranks
    skipped: int  # already there
    errors: dict[str, str] = field(default_factory=dict)  # shard -> why it could not be read on


def heat(values: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 colours."""
    x = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def overlay(
    frame: np.ndarray, attention: np.ndarray, *, alpha: float = 0.55, short_side: int = 256
) -> Image.Image:
    """The frame with the attention map (normalised to its maximum) blended over it."""
    a = attention / max(float(attention.max()), 1e-12)
    blend = (
        frame.astype(np.float32) * (1 - alpha * a[..., None]) + heat(a) * (alpha * a[..., None])
    ).astype(np.uint8)
    img = Image.fromarray(blend)
    scale = short_side / min(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)


@torch.no_grad()
def attention_map(frozen: Frozen, frames: np.ndarray, spec: np.ndarray) -> np.ndarray:
    """beta_v for one clip, upsampled to the frames' size: ``[H, W]`` float32."""
    c = frozen.cfg.data
    device = next(frozen.model.parameters()).device
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)  # [T, 3, H, W]
    h, w = x.shape[-2:]
    scale = c.crop_px / min(h, w)
    x = F.interpolate(x, size=(max(16, round(h * scale)), max(16, round(w * scale))), mode="bilinear",
                      antialias=True, align_corners=False)  # fmt: skip
    video = ((x.permute(1, 0, 2, 3) - MEAN) / STD).unsqueeze(0).to(device)
    audio = spec_to_tensor(spec, None, mean=c.spec_mean, std=c.spec_std).unsqueeze(0).to(device)
    feats = frozen.model(video, audio)
    _, z_a = frozen.model.embed(feats, attention=frozen.attention)
    regions, _ = frozen.model.region_embeddings(feats)
    beta = cross_modal_target(regions, z_a, frozen.cfg.loss.target_temperature)[0]
    gh, gw = (int(v) for v in feats["grid_hw"])
    grid = beta.reshape(1, 1, gh, gw).float()
    return (
        F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
    )


def localize(
    shards: str | list[str],
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    limit: int | None = None,
) -> LocalizeReport:
    """Attention maps for the segments of ``shards`` (the first ``limit`` if given).

    Under torchrun each rank takes disjoint shards (``limit`` then counts per
    rank) and rank 0 writes the page once all are done. A folder holds the maps
    of one checkpoint: another is refused.
    """
    if limit is not None and limit < 1:
        raise LocalizeError(f"--limit must be >= 1 (or 0: all), got {limit}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LocalizeError(f"{out} is a file, not a folder")
    info = distributed.init(device)
    try:
        frozen = Frozen.load(ckpt, info.device)
        urls = resolve(shards)[info.rank :: info.world_size]
        out.mkdir(parents=True, exist_ok=True)
        _check_checkpoint(out, frozen.metadata["checkpoint_sha256"], is_main=info.is_main)
        made, skipped, errors = _maps(frozen, urls, out, limit)
        made, skipped = (distributed.all_reduce_sum(x, info.device) for x in (made, skipped))
        errors = {k: v for e in distributed.gather_objects(errors) for k, v in e.items()}
        if info.distributed:
            torch.distributed.barrier()
        if info.is_main:
            write_index(out)
        return LocalizeReport(out, made, skipped, errors)
    finally:
        distributed.shutdown()


class LocalizeError(ValueError):
    """One-line problems with the arguments or the output folder."""


CHECKPOINT_FILE = ".checkpoint-sha256"


def _check_checkpoint(out: Path, sha: str, *, is_main: bool) -> None:
    path = out / CHECKPOINT_FILE
    if path.exists():
        have = path.read_text().strip()
        if have != sha:
            raise LocalizeError(
                f"{out} holds attention maps of another checkpoint (sha256 {have[:12]}...): use another --out"
            )
    elif is_main:
        path.write_text(sha + "\n")


def _maps(frozen: Frozen, urls: list[str], out: Path, limit: int | None):
    """Write the maps of ``urls``' segments; (made, skipped, errors by shard)."""
    clip_frames = frozen.cfg.data.clip_frames
    decode = SafeDecode()
    made = skipped = 0
    errors: dict[str, str] = {}
    for raw in wds.DataPipeline(wds.SimpleShardList(urls), ShardSamples()):
        if limit is not None and made + skipped >= limit:
            break
        s = raw if "__error__" in raw else decode_or_marker(raw, decode)
        if "__error__" in s:
            errors.setdefault(s["__url__"], s["__error__"])
            continue
        key, meta = s["key"], s["meta"]
        if (out / f"{key}.npy").exists():
            skipped += 1
            continue
        n = len(s["jpegs"])
        w = choose_window(meta, clip_frames, None, first_frame=max(0, (n - clip_frames) // 2))
        idx = frame_indices(w, n)
        frames = np.stack([simplejpeg.decode_jpeg(s["jpegs"][i], colorspace="RGB") for i in idx])
        att = attention_map(frozen, frames, cut_columns(s["spec"], w))
        middle = frames[len(idx) // 2]
        overlay(middle, att).save(out / f"{key}.png")
        info = {"key": key, "source": meta["source"], "start_s": meta["start_s"], "end_s": meta["end_s"],
                "frame_time_s": meta["frame_times"][idx[len(idx) // 2]], "label": meta.get("label")}  # fmt: skip
        (out / f"{key}.json").write_text(json.dumps(info))
        np.save(out / f".{key}.npy", att.astype(np.float32))
        (out / f".{key}.npy").rename(out / f"{key}.npy")  # the .npy marks the key done
        made += 1
    return made, skipped, errors


def write_index(out: Path) -> Path:
    """``index.html``: a grid of every overlay in ``out`` with its key, source and time."""
    cards = []
    for npy in sorted(out.glob("*.npy")):  # a map's json beside its .npy; nothing else here
        meta_path = npy.with_suffix(".json")
        if not meta_path.exists():
            continue
        m = json.loads(meta_path.read_text())
        caption = (
            f"{m['key']}<br>{html.escape(str(m['source']))}<br>frame at {m['frame_time_s']:.2f} s"
        )
        if m.get("label"):
            caption += f"<br>label: {html.escape(str(m['label']))}"
        cards.append(
            f'<figure><img src="{html.escape(m["key"])}.png" loading="lazy"><figcaption>{caption}</figcaption></figure>'
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>avprep localize</title>"
        "<style>body{font-family:sans-serif;background:#111;color:#ddd}main{display:grid;"
        "grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}figure{margin:0}"
        "img{width:100%;border-radius:4px}figcaption{font-size:12px;word-break:break-all}</style>"
        f"<h1>Where is the sound? {len(cards)} segments</h1>"
        "<p>Audio-guided visual attention (CMAC's beta_v) on each segment's middle frame: bright = "
        "where the model places the sound.</p><main>" + "".join(cards) + "</main>"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
