"""Augmentations: one random draw per clip, applied identically to all its frames.

Video: random resized crop, horizontal flip, colour jitter (brightness,
contrast, saturation), then ImageNet normalisation. Audio: optional
SpecAugment-style time and frequency masks, then fixed normalisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)


def crop_box(
    h: int, w: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of ``scale`` area and ratio in [3/4, 4/3]."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def center_box(h: int, w: int) -> tuple[int, int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def video_to_tensor(
    frames: np.ndarray,
    crop_px: int,
    rng: np.random.Generator | None,
    *,
    scale: tuple[float, float] = (0.3, 1.0),
    flip_p: float = 0.5,
    jitter: float = 0.0,
) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 -> normalised ``[3, T, crop_px, crop_px]`` float32.

    With ``rng`` None: a centre crop and no randomness (evaluation).
    """
    t, h, w, _ = frames.shape
    top, left, ch, cw = crop_box(h, w, scale, rng) if rng is not None else center_box(h, w)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + ch, left : left + cw]))
    x = x.permute(0, 3, 1, 2).float().div_(255)  # [T, 3, h, w]
    x = F.interpolate(
        x, size=(crop_px, crop_px), mode="bilinear", align_corners=False, antialias=True
    )
    if rng is not None and rng.random() < flip_p:
        x = x.flip(-1)
    if rng is not None and jitter > 0:
        b, c, s = (float(rng.uniform(1 - jitter, 1 + jitter)) for _ in range(3))
        x = x * b
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - gray) * s + gray
        x = x.clamp_(0, 1)
    x = x.permute(1, 0, 2, 3)  # [3, T, H, W]
    return (x - MEAN) / STD


def spec_to_tensor(
    spec: np.ndarray,
    rng: np.random.Generator | None,
    *,
    mean: float,
    std: float,
    time_masks: int = 0,
    freq_masks: int = 0,
    mask_frac: float = 0.125,
) -> torch.Tensor:
    """``[n_mels, n_columns]`` float16 -> normalised ``[1, n_mels, n_columns]`` float32."""
    x = (torch.from_numpy(spec.astype(np.float32)) - mean) / std
    if rng is not None:
        for axis, count in ((1, time_masks), (0, freq_masks)):
            size = x.shape[axis]
            longest = max(1, int(size * mask_frac))
            for _ in range(count):
                width = int(rng.integers(0, longest + 1))
                start = int(rng.integers(0, max(1, size - width + 1)))
                if axis == 1:
                    x[:, start : start + width] = 0.0
                else:
                    x[start : start + width, :] = 0.0
    return x.unsqueeze(0)
