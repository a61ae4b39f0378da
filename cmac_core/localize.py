"""Where is the sound? Audio-guided visual attention maps, saved for people to browse.

For each segment: the middle clip, whole frame (short side resized to the
training crop size, no crop), goes through the frozen model; the map is CMAC's
target attention beta_v(s) = softmax_s(<phi_v(v_s), z_a> / tau_b), where z_a is
the same clip's audio embedding. It is placed on the stored frame (each grid cell
where it looks: ``cmac_core.grid_maps``) and saved
as ``{key}.npy`` (float32 [H, W], sums to 1 over the region grid before
upsampling), the vision-only attention alpha_v beside it as ``{key}.alpha.npy``,
the Grad-CAM of the pair's similarity as ``{key}.gradcam.npy`` (``cmac_core.gradcam``:
for a model trained on pooled features, such as avid, the better-placed map; not lla),
and ``{key}.png`` (a heat overlay on the middle frame of beta_v, or for avid of the
Grad-CAM: ``shown_map``), with an
``index.html`` grid of all of them.
"""

from __future__ import annotations

import html
import io
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from avprep import schema
from avprep.schema import SampleError
from cmac_core import distributed, grid_maps
from cmac_core.data.augment import MEAN, STD, spec_norm, spec_to_tensor
from cmac_core.data.clip import choose_window, cut_columns, frame_indices
from cmac_core.data.damage import SAMPLE, Damage, ShardSamples, decode_or_marker, is_marker, marker
from cmac_core.data.shards import resolve
from cmac_core.data.stages import SafeDecode, decode_jpegs
from cmac_core.embed.frozen import Frozen
from cmac_core.errors import CmacError
from cmac_core.gradcam import gradcam
from cmac_core.losses import cross_modal_target
from cmac_core.watchdog import Watchdog, wait_for_all

# A perceptual "inferno"-like ramp: dark purple -> red -> yellow.
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)


@dataclass
class LocalizeReport:
    out_dir: Path
    maps: int  # all ranks
    skipped: int  # already there
    damage: Damage = field(default_factory=Damage)  # damaged samples and shards met (all ranks)


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
def attention_maps(
    frozen: Frozen, frames: np.ndarray, spec: np.ndarray, meta: dict
) -> dict[str, np.ndarray]:
    """One clip's maps at the frames' size, ``[H, W]`` float32 each, every grid cell's
    value placed where the cell looks (``grid_maps``):
    ``beta_v``, where the clip's sound places the source (CMAC's audio-guided target;
    for any model, the softmax of region-audio similarity), ``alpha_v``, where the
    video alone attends (CMAC's vision-only scorer; untrained in other methods), and, for
    models that score a pair by pooled features (not lla), ``gradcam_v``: where the pair's
    similarity is matched through the model's own pooling (``cmac_core.gradcam``).
    ``meta``: the sample's json (its preset decides the spectrogram's normalisation where
    the checkpoint's config leaves it open)."""
    c = frozen.cfg.data
    device = next(frozen.model.parameters()).device
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)  # [T, 3, H, W]
    h, w = x.shape[-2:]
    scale = c.crop_px / min(h, w)
    x = F.interpolate(x, size=(max(16, round(h * scale)), max(16, round(w * scale))), mode="bilinear",
                      antialias=True, align_corners=False)  # fmt: skip
    video = ((x.permute(1, 0, 2, 3) - MEAN) / STD).unsqueeze(0).to(device)
    mean, std = spec_norm(c, meta)
    audio = spec_to_tensor(spec, None, mean=mean, std=std).unsqueeze(0).to(device)
    feats = frozen.model(video, audio)
    grids = {"alpha_v": feats["alpha_v"][0]}
    if "beta_v" in feats:  # lla: its audio-guided attention, averaged over heads (coattention.py)
        grids["beta_v"] = feats["beta_v"][0]
    else:
        _, z_a = frozen.model.embed(feats, attention=frozen.attention)
        regions, _ = frozen.model.region_embeddings(feats)
        grids["beta_v"] = cross_modal_target(regions, z_a, frozen.cfg.loss.target_temperature)[0]
        grids["gradcam_v"] = gradcam(frozen.model, feats, z_a, attention=frozen.attention)[0]
    gh, gw = (int(v) for v in feats["grid_hw"])
    encoder = frozen.model.video
    return {
        name: grid_maps.to_pixels(m.reshape(gh, gw), tuple(x.shape[-2:]), (h, w),
                                  stride_px=encoder.STRIDE_PX, origin_px=encoder.ORIGIN_PX)
        for name, m in grids.items()
    }  # fmt: skip


def attention_map(frozen: Frozen, frames: np.ndarray, spec: np.ndarray, meta: dict) -> np.ndarray:
    """beta_v for one clip, upsampled to the frames' size: ``[H, W]`` float32."""
    return attention_maps(frozen, frames, spec, meta)["beta_v"]


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
    rank) and rank 0 writes the page once all are done; a rank that finishes early
    waits on the rendezvous store, not in a collective (``watchdog.wait_for_all``).
    A folder holds the maps of one checkpoint: another is refused.
    """
    if limit is not None and limit < 1:
        raise LocalizeError(f"limit must be >= 1 (or None: all), got {limit}",
                            cli=f"--limit must be >= 1 (or 0: all), got {limit}")  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LocalizeError(f"{out} is a file, not a folder")
    info = distributed.init(device)
    dog = Watchdog.start_for(info, what="segment", name_laggards=False)
    try:
        frozen = Frozen.load(ckpt, info.device, clips=1)  # a clip at a time, whole frames
        urls = resolve(shards)[info.rank :: info.world_size]
        try:
            out.mkdir(parents=True, exist_ok=True)
            _check_checkpoint(out, frozen.metadata["checkpoint_sha256"], is_main=info.is_main)
        except OSError as e:
            raise LocalizeError(f"cannot write to {out}: {e.strerror or e}") from e
        made, skipped, damage = _maps(frozen, urls, out, limit, dog=dog)
        if dog is not None:
            dog.progress(made + skipped, "waiting for the other ranks to finish")
        wait_for_all("localize", info)  # imbalanced shares: off any collective
        made, skipped = (distributed.all_reduce_sum(x, info.device) for x in (made, skipped))
        total = Damage()
        for rank_damage in distributed.gather_objects(damage):
            total.update(rank_damage)
        if info.is_main:
            write_index(out)
        if dog is not None:
            dog.finish()
        return LocalizeReport(out, made, skipped, total)
    finally:
        if dog is not None:
            dog.stop()
        distributed.shutdown()


class LocalizeError(CmacError):
    """One-line problems with the arguments or the output folder."""


CHECKPOINT_FILE = ".checkpoint-sha256"


def _check_checkpoint(out: Path, sha: str, *, is_main: bool) -> None:
    path = out / CHECKPOINT_FILE
    if path.exists():
        have = path.read_text().strip()
        if have != sha:
            held = f"{out} holds attention maps of another checkpoint (sha256 {have[:12]}...)"
            raise LocalizeError(f"{held}: use another out_dir", cli=f"{held}: use another --out")
    elif is_main:
        path.write_text(sha + "\n")


def _maps(frozen: Frozen, urls: list[str], out: Path, limit: int | None, *, dog=None):
    """Write the maps of ``urls``' segments; ``(made, skipped, damage)``."""
    clip_frames = frozen.cfg.data.clip_frames
    decode = SafeDecode()
    made = skipped = 0
    damage = Damage()
    for raw in wds.DataPipeline(wds.SimpleShardList(urls), ShardSamples()):
        if limit is not None and made + skipped >= limit:
            break
        s = decode_or_marker(raw, decode)
        if is_marker(s):
            damage.note(s)
            continue
        key, meta = schema.check_key(s["key"]), s["meta"]  # a key names files: checked again
        if (out / f"{key}.npy").exists():
            skipped += 1
            continue
        n = len(s["jpegs"])
        w = choose_window(
            meta,
            clip_frames,
            None,
            first_frame=max(0, (n - clip_frames) // 2),
            audio_seconds=frozen.cfg.data.audio_seconds,
        )  # as in training
        idx = frame_indices(w, n)
        try:
            frames = decode_jpegs(key, [s["jpegs"][i] for i in idx])
        except SampleError as e:
            damage.note(marker(raw["__url__"], e, kind=SAMPLE, key=key))
            continue
        maps = attention_maps(frozen, frames, cut_columns(s["spec"], w), meta)
        shown = shown_map(frozen.cfg.loss.method)
        info = {"key": key, "source": meta["source"], "start_s": meta["start_s"], "end_s": meta["end_s"],
                "frame_time_s": meta["frame_times"][idx[len(idx) // 2]], "label": meta.get("label"),
                "map": shown}  # fmt: skip
        _save_map(out, key, overlay(frames[len(idx) // 2], maps[shown]), info, maps)
        made += 1
        if dog is not None:
            dog.progress(made + skipped, "making maps")
    return made, skipped, damage


def shown_map(method: str) -> str:
    """The map a segment's picture shows: CMAC's and lla's own audio-guided attention
    (``beta_v``), and for avid, which trains its heads on pooled features only, the
    Grad-CAM of the pair's similarity (``gradcam_v``; docs/method.md, "Which map to score")."""
    return "gradcam_v" if method == "avid" else "beta_v"


def _save_map(
    out: Path, key: str, picture: Image.Image, info: dict, maps: dict[str, np.ndarray]
) -> None:
    """``{key}.png``, ``{key}.json``, ``{key}.alpha.npy`` (alpha_v), ``{key}.gradcam.npy``
    (gradcam_v, for models that have one), then ``{key}.npy``
    (beta_v, which marks the key done), each encoded in memory, written under a hidden
    temporary name and renamed: a full disk leaves no partial file, and says so with the
    system's own words."""
    files = [(f"{key}.png", _png(picture)), (f"{key}.json", json.dumps(info).encode()),
             (f"{key}.alpha.npy", _npy(maps["alpha_v"]))]  # fmt: skip
    if "gradcam_v" in maps:
        files.append((f"{key}.gradcam.npy", _npy(maps["gradcam_v"])))
    files.append((f"{key}.npy", _npy(maps["beta_v"])))
    for name, data in files:
        tmp = out / f".{name}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, out / name)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LocalizeError(f"cannot write to {out}: {e.strerror or e}") from e


def _png(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, values.astype(np.float32))
    return buf.getvalue()


def write_index(out: Path) -> Path:
    """``index.html``: a grid of every overlay in ``out`` with its key, source and time.

    Everything shown comes from data (keys, source paths, labels): all of it is escaped,
    and a file whose name is not a sample key is not shown.
    """
    cards = []
    for npy in sorted(out.glob("*.npy")):  # a map's json beside its .npy; nothing else here
        key, meta_path = npy.stem, npy.with_suffix(".json")
        if not schema.is_key(key) or not meta_path.exists():
            continue
        try:
            m = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(m, dict):
            continue
        lines = [key, str(m.get("source")), f"frame at {_seconds(m.get('frame_time_s'))}"]
        if m.get("label"):
            lines.append(f"label: {m['label']}")
        lines.append(f"map: {_MAP_NAMES.get(m.get('map', 'beta_v'), '?')}")
        caption = "<br>".join(html.escape(line) for line in lines)
        src = html.escape(urllib.parse.quote(f"{key}.png"))
        cards.append(
            f'<figure><img src="{src}" loading="lazy"><figcaption>{caption}</figcaption></figure>'
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>avprep localize</title>"
        "<style>body{font-family:sans-serif;background:#111;color:#ddd}main{display:grid;"
        "grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}figure{margin:0}"
        "img{width:100%;border-radius:4px}figcaption{font-size:12px;word-break:break-all}</style>"
        f"<h1>Where is the sound? {len(cards)} segments</h1>"
        "<p>Where the model places the sound on each segment's middle frame (bright): its "
        "audio-guided attention beta_v, or for avid checkpoints the Grad-CAM of the pair's "
        "similarity; each card names its map.</p><main>" + "".join(cards) + "</main>"
    )
    path = out / "index.html"
    tmp = out / ".index.html.tmp"
    try:
        tmp.write_text(page)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LocalizeError(f"cannot write {path}: {e.strerror or e}") from e
    return path


_MAP_NAMES = {"beta_v": "beta_v (audio-guided attention)", "gradcam_v": "Grad-CAM"}


def _seconds(value) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.2f} s" if ok else "? s"
