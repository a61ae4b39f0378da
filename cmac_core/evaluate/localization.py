"""Sound-source localization measures: a map ``[H, W]`` (any scale, higher = "the sound is
here") against the true box of the sounding object, in pixels of that map.

- ``pointing``: is the map's peak inside the box? (ties: the first peak in row order)
- ``size_aware_iou``: keep as many of the map's top pixels as the box has, IoU with the box.
  A map that ranks the box's pixels first scores 1 whatever the box's size.
- ``ciou``: the literature's protocol (LVS, Chen et al. 2021): flag the map's top half of
  pixels, IoU with the box. With half the frame flagged it is at most box area / (H W / 2):
  below 0.5 for any box under a quarter of the frame (``ciou_ceiling``).
- ``success_rate`` (share of clips with cIoU >= 0.5) and ``auc`` (success rate integrated
  over thresholds 0, 0.05, ..., 1, trapezoids), over many clips.
- ``centre_prior``: the map of a model that always points at the frame's centre.

Boxes are ``(c0, r0, c1, r1)`` pixel bounds, exclusive ends (``avprep.truth.box_pixels``).
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]
THRESHOLDS = np.linspace(0.0, 1.0, 21)


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool: True inside the box (clipped to the map)."""
    c0, r0, c1, r1 = box
    mask = np.zeros(shape, bool)
    mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """``[H, W]`` bool: the ``k`` largest values (ties broken by position, stable)."""
    flat = values.ravel()
    keep = np.zeros(flat.size, bool)
    if k > 0:
        keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep.reshape(values.shape)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def pointing(values: np.ndarray, box: Box) -> float:
    """1.0 if the map's (first) maximum lies inside the box, else 0.0."""
    r, c = np.unravel_index(int(np.argmax(values)), values.shape)
    return float(box_mask(box, values.shape)[r, c])


def which_object(values: np.ndarray, box: Box, others: list[Box]) -> float:
    """1.0 if the map's mean inside ``box`` exceeds its mean inside every box of ``others``
    (the silent objects): the map tells which object sounds, however precisely it places it.
    Chance: 1 / (1 + len(others))."""
    inside = float(values[box_mask(box, values.shape)].mean())
    return float(all(inside > float(values[box_mask(o, values.shape)].mean()) for o in others))


def size_aware_iou(values: np.ndarray, box: Box) -> float:
    """IoU of the box with the map's top pixels, as many as the box holds."""
    mask = box_mask(box, values.shape)
    return _iou(_top(values, int(mask.sum())), mask)


def ciou(values: np.ndarray, box: Box, *, flagged: float = 0.5) -> float:
    """IoU of the box with the map's top ``flagged`` share of pixels (LVS: half)."""
    return _iou(_top(values, round(values.size * flagged)), box_mask(box, values.shape))


def ciou_ceiling(box: Box, shape: tuple[int, int], *, flagged: float = 0.5) -> float:
    """The best cIoU any map can reach for this box: flagged pixels cover it, or it them."""
    area, flagged_px = int(box_mask(box, shape).sum()), round(shape[0] * shape[1] * flagged)
    return min(area, flagged_px) / max(area, flagged_px, 1)


def success_rate(cious: np.ndarray, threshold: float = 0.5) -> float:
    """Share of clips whose cIoU reaches ``threshold``."""
    return float(np.mean(np.asarray(cious) >= threshold)) if len(cious) else 0.0


def auc(cious: np.ndarray) -> float:
    """Area under the success-rate curve over ``THRESHOLDS`` (trapezoid rule)."""
    rates = np.array([success_rate(cious, t) for t in THRESHOLDS])
    return float(np.sum((rates[1:] + rates[:-1]) / 2 * np.diff(THRESHOLDS)))


def centre_prior(shape: tuple[int, int], *, sigma_frac: float = 0.25) -> np.ndarray:
    """A Gaussian at the frame's centre, ``sigma = sigma_frac x`` the side: ``[H, W]``."""
    h, w = shape
    y = (np.arange(h) + 0.5 - h / 2) / (sigma_frac * h)
    x = (np.arange(w) + 0.5 - w / 2) / (sigma_frac * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


def measure(maps: list[np.ndarray], boxes: list[Box]) -> dict[str, float]:
    """Every measure, averaged over clips: ``pointing``, ``size_aware_iou``, ``ciou``,
    ``success`` (cIoU >= 0.5), ``auc``."""
    if len(maps) != len(boxes) or not maps:
        raise ValueError(f"need as many boxes as maps (and some), got {len(maps)} and {len(boxes)}")
    cious = np.array([ciou(m, b) for m, b in zip(maps, boxes, strict=True)])
    return {
        "pointing": float(np.mean([pointing(m, b) for m, b in zip(maps, boxes, strict=True)])),
        "size_aware_iou": float(
            np.mean([size_aware_iou(m, b) for m, b in zip(maps, boxes, strict=True)])
        ),
        "ciou": float(cious.mean()),
        "success": success_rate(cious),
        "auc": auc(cious),
    }
