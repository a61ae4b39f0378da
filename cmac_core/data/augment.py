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
GRAY = torch.tensor([0.299, 0.587, 0.114])  # luma weights of the saturation jitter
LOW = (-MEAN / STD).flatten().tolist()  # [0, 1] in normalised units, per channel
HIGH = ((1 - MEAN) / STD).flatten().tolist()


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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 -> normalised ``[3, T, crop_px, crop_px]`` float32, contiguous.

    With ``rng`` None: a centre crop and no randomness (evaluation). With
    ``out`` (a contiguous float32 tensor of that shape, such as one clip's slot
    of a batch) the result is written there. The crop is resized as uint8
    (torch's antialiased bilinear kernel for channels-last bytes, ~10x faster
    than in float32; within one level of a float resize).
    """
    t, h, w, _ = frames.shape
    top, left, ch, cw = crop_box(h, w, scale, rng) if rng is not None else center_box(h, w)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + ch, left : left + cw]))
    x = F.interpolate(x.permute(0, 3, 1, 2), size=(crop_px, crop_px), mode="bilinear",
                      align_corners=False, antialias=True)  # fmt: skip
    if rng is not None and rng.random() < flip_p:
        x = x.flip(-1)
    x = x.permute(1, 0, 2, 3)  # [3, T, crop_px, crop_px] uint8
    out = torch.empty(x.shape) if out is None else out
    if rng is None or jitter <= 0:
        return out.copy_(x).sub_(MEAN * 255).div_(STD * 255)
    b, c, s = (float(rng.uniform(1 - jitter, 1 + jitter)) for _ in range(3))
    pixels = torch.empty(x.shape).copy_(x)  # float32 in 0..255
    # Brightness x*b, contrast (x - m)*c + m (m: the frame's mean), saturation
    # (x - gray)*s + gray and the normalisation, composed: one 3x3 matrix and a
    # bias per channel and frame; then the clamp to [0, 1] in normalised units.
    sat = s * torch.eye(3) + (1 - s) * GRAY.expand(3, 3)
    m = pixels.mean(dim=(0, 2, 3)) * (b / 255)  # [T], after brightness
    std, mean = STD.view(3, 1), MEAN.view(3, 1)
    bias = (sat.sum(1, keepdim=True) * ((1 - c) * m) - mean) / std  # [3, T]
    torch.matmul(sat * (c * b / 255) / std, pixels.view(3, -1), out=out.view(3, -1))
    out.view(3, t, -1).add_(bias.unsqueeze(-1))
    for k in range(3):
        out[k].clamp_(LOW[k], HIGH[k])
    return out


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
