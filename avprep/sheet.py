"""The contact sheet image: each sample's frames and log-mel on one time axis.

One row per sample, all rows on the same scale (pixels per second)::

    key   source   start-end s
    [thumb]   [thumb]   [thumb] ...   a few frames, each centred over its time
    |||||||||||||||||||||||||||||||   every frame, squeezed into [t_i, t_i+1)
    ###############################   log-mel, low frequencies at the bottom
    '    '    '    '    |    '    '   ticks every second (minor every 0.1 s)

Frame ``i`` is drawn from ``frame_times[i]``; spectrogram column ``j`` at the
centre of its window, ``spec_start_s + j * hop_s + win_s / 2`` (where there are
more columns than pixels, a pixel shows their maximum). A flash in the frames
and a sound in the spectrogram at the same moment are therefore at the same x.
Pillow and numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw, ImageFont

PLOT_W = 960  # pixels for the longest sample's seconds
LEFT, RIGHT = 84, 28
TITLE_H, THUMB_H, LINK_H, RIBBON_H, GAP, SPEC_H, AXIS_H, ROW_GAP = 20, 72, 12, 32, 3, 128, 24, 16
ROW_H = TITLE_H + THUMB_H + LINK_H + RIBBON_H + GAP + SPEC_H + AXIS_H + ROW_GAP
HEADER_H = 26
MAX_THUMBS = 8
BG, INK, FAINT, EMPTY = (255, 255, 255), (30, 30, 30), (150, 150, 150), (228, 228, 228)

# magma-like ramp: (position, R, G, B)
_RAMP = np.array(
    [
        (0.00, 0, 0, 4),
        (0.13, 28, 16, 68),
        (0.25, 79, 18, 123),
        (0.38, 129, 37, 129),
        (0.50, 181, 54, 122),
        (0.63, 229, 80, 100),
        (0.75, 251, 135, 97),
        (0.88, 254, 194, 135),
        (1.00, 252, 253, 191),
    ]
)
DYNAMIC_RANGE = math.log(1e8)  # 80 dB of power in natural-log units: darker is black


def colormap(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] (any shape) -> uint8 RGB, shape ``values.shape + (3,)``."""
    v = np.clip(values, 0.0, 1.0)
    rgb = [np.interp(v, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def normalize(spec: np.ndarray) -> np.ndarray:
    """Log-mel -> [0, 1]: the maximum is 1, ``DYNAMIC_RANGE`` below it (or the 1st percentile) 0."""
    spec = spec.astype(np.float32)
    hi = float(spec.max())
    lo = max(float(np.percentile(spec, 1)), hi - DYNAMIC_RANGE)
    return (spec - lo) / max(hi - lo, 1e-3)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _mel(hz: np.ndarray | float, scale: str) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    lin = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, lin)


def freq_ticks(meta: dict) -> list[tuple[float, str]]:
    """``(height fraction from the bottom, label)`` of the mel axis (empty for unknown presets)."""
    from avprep.spectrogram import PRESETS  # noqa: PLC0415  (dataclasses only, no torch)

    spec = meta["spec"]
    preset = PRESETS.get(spec.get("preset"))
    if preset is None:
        return []
    f_max = preset.f_max_hz or meta["sample_rate"] / 2
    m0, m1 = _mel(preset.f_min_hz, preset.mel_scale), _mel(f_max, preset.mel_scale)
    n = spec["n_mels"]
    out = []
    for hz in (preset.f_min_hz, 1000.0, 4000.0, f_max):
        if preset.f_min_hz <= hz <= f_max:
            bin_ = (_mel(hz, preset.mel_scale) - m0) / (m1 - m0) * (n + 1) - 1
            frac = float(np.clip((bin_ + 0.5) / n, 0.0, 1.0))
            label = f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"
            if all(abs(frac - f) > 0.08 for f, _ in out):
                out.append((frac, label))
    return out


def spec_pixels(meta: dict, spec: np.ndarray, width: int, px_per_s: float) -> np.ndarray:
    """The spectrogram as uint8 RGB ``[SPEC_H, width, 3]``, pixel ``p`` at ``start_s + p / px_per_s``."""
    hop, win = meta["spec"]["hop_s"], meta["spec"]["win_s"]
    centre0 = meta["spec_start_s"] + win / 2  # time of column 0's window centre
    n_cols = spec.shape[1]
    edges = meta["start_s"] + np.arange(width + 1) / px_per_s
    first = np.clip(np.ceil((edges - centre0) / hop - 1e-9), 0, n_cols).astype(int)
    mid_t = (edges[:-1] + edges[1:]) / 2
    mids = np.clip(np.round((mid_t - centre0) / hop), 0, max(n_cols - 1, 0)).astype(int)
    spec_end = meta["spec_start_s"] + (n_cols - 1) * hop + win  # end of the last window
    covered = (mid_t >= meta["spec_start_s"]) & (mid_t < spec_end)
    values = normalize(spec) if n_cols else np.zeros((spec.shape[0], 0))
    out = np.zeros((spec.shape[0], width), np.float32)
    valid = np.zeros(width, bool)
    for p in range(width):
        j0, j1 = first[p], first[p + 1]
        if j1 > j0:
            out[:, p], valid[p] = values[:, j0:j1].max(axis=1), True
        elif covered[p] and n_cols:  # no window centre in this pixel: the nearest window
            out[:, p], valid[p] = values[:, mids[p]], True
    rgb = colormap(out[::-1])  # mel bin 0 (lowest) at the bottom
    rgb[:, ~valid] = EMPTY
    return np.asarray(Image.fromarray(rgb).resize((width, SPEC_H), Image.Resampling.NEAREST))


def frame_spans(meta: dict) -> list[tuple[float, float]]:
    """``[t_i, t_{i+1})`` in seconds for each frame.

    The last frame lasts until ``end_s`` if that is within two stored frame
    periods (``1 / fps``), else one period: frames that stop early show as a gap.
    """
    times = [float(t) for t in meta["frame_times"]]
    if not times:
        return []
    period, end = 1.0 / float(meta["fps"]), float(meta["end_s"])
    last = end if end - times[-1] <= 2 * period else times[-1] + period
    return [(t, max(e, t)) for t, e in zip(times, [*times[1:], last], strict=True)]


def _thumb_indices(times: list[float], start: float, end: float, k: int) -> list[int]:
    """Frames nearest to the centres of ``k`` equal time bins of [start, end)."""
    targets = start + (np.arange(k) + 0.5) * (end - start) / k
    arr = np.asarray(times)
    return sorted({int(np.abs(arr - t).argmin()) for t in targets})


def _middle_ellipsis(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while (
        keep > 8
        and draw.textlength(text[: keep // 2] + "..." + text[-keep // 2 :], font=font) > width
    ):
        keep -= 4
    return text[: keep // 2] + "..." + text[-keep // 2 :]


def _time_axis(
    draw, y_top: int, y_axis: int, start: float, end: float, px_per_s: float, font
) -> None:
    """Second ticks with labels below ``y_axis``; a faint line through the tracks at each second."""
    step = next(s for s in (1, 2, 5, 10, 30, 60, 300) if s * px_per_s >= 40)
    x_of = lambda t: LEFT + (t - start) * px_per_s  # noqa: E731
    if 0.1 * px_per_s >= 6:
        for i in range(math.ceil(start * 10 - 1e-6), math.floor(end * 10 + 1e-6) + 1):
            draw.line([(x_of(i / 10), y_axis), (x_of(i / 10), y_axis + 3)], fill=FAINT)
    for s in range(math.ceil(start / step - 1e-6) * step, math.floor(end + 1e-6) + 1, step):
        x = round(x_of(s))
        for y in range(y_top, y_axis, 4):  # dotted guide through frames and spectrogram
            draw.point((x, y), fill=FAINT)
        draw.line([(x, y_axis), (x, y_axis + 7)], fill=INK)
        draw.text((x, y_axis + 8), f"{s} s", fill=INK, font=font, anchor="mt")


def row_layout(row: int) -> dict[str, int]:
    """Top pixel of each track of row ``row``: title, thumbs, ribbon, spec, axis (spec bottom)."""
    title = HEADER_H + row * ROW_H
    thumbs = title + TITLE_H
    ribbon = thumbs + THUMB_H + LINK_H
    spec = ribbon + RIBBON_H + GAP
    return {"title": title, "thumbs": thumbs, "ribbon": ribbon, "spec": spec, "axis": spec + SPEC_H}


class _Row:
    """One sample's row: its time -> x mapping and track positions."""

    def __init__(self, meta: dict, row: int, px_per_s: float) -> None:
        self.meta, self.px_per_s = meta, px_per_s
        self.start, self.end = float(meta["start_s"]), float(meta["end_s"])
        self.width = max(1, round((self.end - self.start) * px_per_s))
        self.y = row_layout(row)

    def x(self, t: float) -> float:
        return LEFT + (t - self.start) * self.px_per_s


def _draw_frames(image: Image.Image, draw, r: _Row, frames: list[bytes], small) -> None:
    """Every frame squeezed into its [t_i, t_i+1) on the ribbon; a few thumbnails above it."""
    spans = frame_spans(r.meta)
    decoded = [simplejpeg.decode_jpeg(data, colorspace="RGB") for data in frames]
    y_rib, y_thumb = r.y["ribbon"], r.y["thumbs"]
    for (t0, t1), rgb in zip(spans, decoded, strict=False):
        x0 = round(r.x(t0))
        x1 = max(x0 + 1, min(round(r.x(t1)), LEFT + r.width))
        strip = Image.fromarray(rgb).resize((x1 - x0, RIBBON_H), Image.Resampling.BILINEAR)
        image.paste(strip, (x0, y_rib))
    draw.rectangle([LEFT - 1, y_rib - 1, LEFT + r.width, y_rib + RIBBON_H], outline=FAINT)
    if not decoded:
        return
    h, w = decoded[0].shape[:2]
    tw = max(1, round(THUMB_H * w / h))
    k = max(1, min(MAX_THUMBS, len(decoded), int(r.width // (tw + 6))))
    for i in _thumb_indices([t for t, _ in spans], r.start, r.end, k):
        t = spans[i][0]
        left = round(min(max(r.x(t), tw / 2 + 2), image.width - tw / 2 - 2) - tw / 2)
        thumb = Image.fromarray(decoded[i]).resize((tw, THUMB_H), Image.Resampling.BILINEAR)
        image.paste(thumb, (left, y_thumb))
        draw.rectangle([left - 1, y_thumb - 1, left + tw, y_thumb + THUMB_H], outline=FAINT)
        cx, bottom = left + tw / 2, y_thumb + THUMB_H
        draw.line([(cx, bottom), (r.x(t), y_rib - 2)], fill=INK)  # to the frame's own time
        right = cx < r.x(t)  # the label goes on the side the connector leans away from
        draw.text(
            (cx + (3 if right else -3), bottom + 1),
            f"{t:.2f}",
            fill=INK,
            font=small,
            anchor="lt" if right else "rt",
        )


def _draw_spec(image: Image.Image, draw, r: _Row, spec: np.ndarray | None, fonts) -> None:
    font, small = fonts
    y_spec, y_axis = r.y["spec"], r.y["axis"]
    if spec is None:
        draw.text(
            (LEFT + 8, y_spec + SPEC_H // 2), "no spectrogram", fill=INK, font=font, anchor="lm"
        )
    else:
        image.paste(Image.fromarray(spec_pixels(r.meta, spec, r.width, r.px_per_s)), (LEFT, y_spec))
        for frac, label in freq_ticks(r.meta):
            y = round(y_axis - 1 - frac * (SPEC_H - 1))
            draw.line([(LEFT - 5, y), (LEFT - 1, y)], fill=INK)
            draw.text((LEFT - 7, y), label, fill=INK, font=small, anchor="rm")
    draw.rectangle([LEFT - 1, y_spec - 1, LEFT + r.width, y_axis], outline=FAINT)
    draw.text((8, y_spec + 12), "log-mel", fill=INK, font=font, anchor="lm")
    draw.text((8, y_spec + 26), "Hz", fill=FAINT, font=small, anchor="lm")


def draw_row(image: Image.Image, sample: dict[str, Any], row: int, px_per_s: float, fonts) -> None:
    """Draw one sample as row ``row`` (see ``row_layout``)."""
    meta, draw, font = sample["json"], ImageDraw.Draw(image), fonts[0]
    r = _Row(meta, row, px_per_s)
    head = f"{meta['key']}   {r.start:.2f}-{r.end:.2f} s   "
    room = image.width - 16 - draw.textlength(head, font=font)
    source = _middle_ellipsis(draw, str(meta.get("source", "")), font, room)
    draw.text((8, r.y["title"] + 3), head + source, fill=INK, font=font)
    _draw_frames(image, draw, r, sample["frames"], fonts[1])
    draw.text((8, r.y["ribbon"] + RIBBON_H // 2), "frames", fill=INK, font=font, anchor="lm")
    _draw_spec(image, draw, r, sample["spec"], fonts)
    _time_axis(draw, r.y["ribbon"], r.y["axis"], r.start, r.end, px_per_s, fonts[1])


def draw_sheet(samples: list[dict[str, Any]], *, title: str = "") -> Image.Image:
    """An RGB image: a ``title`` line, then one row per sample (``{"json", "frames": [jpeg], "spec"}``)."""
    longest = max(float(s["json"]["end_s"]) - float(s["json"]["start_s"]) for s in samples)
    px_per_s = PLOT_W / max(longest, 1e-3)
    image = Image.new("RGB", (LEFT + PLOT_W + RIGHT, HEADER_H + ROW_H * len(samples)), BG)
    fonts = (_font(13), _font(11))
    if title:
        ImageDraw.Draw(image).text((8, 6), title, fill=INK, font=fonts[0])
    for i, sample in enumerate(samples):
        draw_row(image, sample, i, px_per_s, fonts)
    return image
