"""The report's pictures, drawn with Pillow (no plotting library is a dependency).

- ``curves``: one panel per trained arm, its training loss (and ``nce`` where it differs)
  against the step, one line per seed, all panels on one loss scale.
- ``map_grid``: for a few test clips (columns), the middle frame with the true box, then
  each arm's beta_v and alpha_v maps (rows, first seed) over the frame, the box drawn on
  every one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cmac_core.localize import overlay

INK, FAINT, BG, BOX = (30, 30, 30), (200, 200, 200), (255, 255, 255), (0, 230, 80)
SEED_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
PANEL_W, PANEL_H, MARGIN = 300, 180, 52
LEGEND_PER_ROW, LEGEND_ROW_H = 6, 16  # seed labels under each panel, below the step axis
FONT_PX = 12  # Pillow's default font: at its own size (10) it drops the spaces


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_PX)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def curves(metrics: dict[str, dict[int, list[dict]]], *, key: str = "loss") -> Image.Image:
    """``{arm: {seed: metrics.jsonl records}}`` -> one panel per arm with records."""
    arms = {a: s for a, s in metrics.items() if any(s.values())}
    font = _font()
    n_seeds = max((len(s) for s in arms.values()), default=1)
    rows = -(-n_seeds // LEGEND_PER_ROW)
    img = Image.new("RGB", (max(1, len(arms)) * (PANEL_W + MARGIN) + MARGIN,
                            PANEL_H + 2 * MARGIN + LEGEND_ROW_H * rows), BG)  # fmt: skip
    draw = ImageDraw.Draw(img)
    values = [r[key] for s in arms.values() for recs in s.values() for r in recs if key in r]
    if not values:
        draw.text((MARGIN, MARGIN), "no trained arm", fill=INK, font=font)
        return img
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    for i, (name, seeds) in enumerate(arms.items()):
        x0, y0 = MARGIN + i * (PANEL_W + MARGIN), MARGIN
        draw.rectangle([x0, y0, x0 + PANEL_W, y0 + PANEL_H], outline=FAINT)
        draw.text((x0, y0 - 18), f"{name}: {key} vs step", fill=INK, font=font)
        last = max((r["step"] for recs in seeds.values() for r in recs), default=1)
        for seed, recs in sorted(seeds.items()):
            pts = [(x0 + PANEL_W * r["step"] / max(last, 1),
                    y0 + PANEL_H * (1 - (r[key] - lo) / (hi - lo))) for r in recs if key in r]  # fmt: skip
            if len(pts) > 1:
                draw.line(pts, fill=SEED_COLOURS[seed % len(SEED_COLOURS)], width=2)
            row, col = divmod(seed, LEGEND_PER_ROW)
            draw.text((x0 + 4 + 50 * col, y0 + PANEL_H + 6 + LEGEND_ROW_H * (row + 1)), f"seed {seed}",
                      fill=SEED_COLOURS[seed % len(SEED_COLOURS)], font=font)  # fmt: skip
        draw.text((x0 - 4, y0), f"{hi:.2f}", fill=INK, font=font, anchor="ra")  # right-aligned
        draw.text((x0 - 4, y0 + PANEL_H), f"{lo:.2f}", fill=INK, font=font, anchor="rd")
        draw.text((x0, y0 + PANEL_H + 4), "0", fill=INK, font=font)
        draw.text((x0 + PANEL_W, y0 + PANEL_H + 4), f"{last}", fill=INK, font=font, anchor="ra")
    return img


def _with_box(picture: Image.Image, box, shape) -> Image.Image:
    """Draw the box (pixels of a ``shape`` map) onto ``picture`` (any scale)."""
    sx, sy = picture.width / shape[1], picture.height / shape[0]
    c0, r0, c1, r1 = box
    ImageDraw.Draw(picture).rectangle(
        [c0 * sx, r0 * sy, c1 * sx - 1, r1 * sy - 1], outline=BOX, width=2
    )
    return picture


def map_grid(frames: np.ndarray, boxes: np.ndarray, rows: dict[str, np.ndarray], *,
             tile_px: int = 112) -> Image.Image:  # fmt: skip
    """``frames [k, H, W, 3]``, ``boxes [k, 4]``, ``{row label: maps [>=k, H, W]}``."""
    k = len(frames)
    shape = frames.shape[1:3]
    font = _font()
    label_w = 12 + max(int(font.getlength(label)) for label in ("frame + true box", *rows))
    img = Image.new("RGB", (label_w + k * (tile_px + 4), (len(rows) + 1) * (tile_px + 4)), BG)
    draw = ImageDraw.Draw(img)
    all_rows = {"frame + true box": None, **rows}
    for r, (label, maps) in enumerate(all_rows.items()):
        y = r * (tile_px + 4)
        draw.text((4, y + tile_px // 2 - 6), label, fill=INK, font=font)
        for c in range(k):
            if maps is None:
                tile = Image.fromarray(frames[c])
            else:
                tile = overlay(frames[c], np.asarray(maps[c], np.float32), short_side=tile_px)
            tile = _with_box(tile.resize((tile_px, tile_px)), boxes[c], shape)
            img.paste(tile, (label_w + c * (tile_px + 4), y))
    return img
