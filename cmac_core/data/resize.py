"""Crops resized on the training device: the loader's resize, moved off its cores.

A batch of crops of different sizes travels as one uint8 tensor ``[B, T, H, W, 3]``,
each crop in its top-left corner (H, W: the batch's largest), with ``[B, 3]``
(height, width, flip) per crop. Each crop is resized by two matrix products, one per
axis, whose rows hold the weights of torch's antialiased bilinear kernel
(``F.interpolate(..., antialias=True)``, the loader's resize): the same pixels, in
float32 instead of rounded to bytes, and the padding is never read (its weights are 0).
Everything is computed on the crops' device from tensors already there: no value goes
back to the host.
"""

from __future__ import annotations

import torch


def axis_weights(sizes: torch.Tensor, out: int, pad: int) -> torch.Tensor:
    """``[B, out, pad]`` float32: row ``o`` of crop ``b`` holds the weights that make output
    pixel ``o`` from input pixels ``0 .. sizes[b] - 1`` (0 beyond), as torch's antialiased
    bilinear kernel does (``aten/src/ATen/native/UpSample.h``,
    ``_compute_indices_min_size_weights_aa``: a triangle filter as wide as the scale
    when shrinking, plain bilinear when enlarging, taps at the border dropped and the rest
    renormalised)."""
    size = sizes.to(torch.float32).view(-1, 1, 1)
    scale = size / out
    support = torch.where(scale >= 1, scale, torch.ones_like(scale))
    invscale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    o = torch.arange(out, device=sizes.device, dtype=torch.float32).view(1, -1, 1)
    center = scale * (o + 0.5)
    lo = torch.floor(center - support + 0.5).clamp(min=0)
    hi = torch.minimum(torch.floor(center + support + 0.5), size)
    j = torch.arange(pad, device=sizes.device, dtype=torch.float32).view(1, 1, -1)
    w = (1 - ((j - center + 0.5) * invscale).abs()).clamp(min=0) * ((j >= lo) & (j < hi))
    return w / w.sum(-1, keepdim=True)


def resize_crops(crops: torch.Tensor, sizes: torch.Tensor, out: int) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` crops (each ``sizes[b] = (height, width, flip)`` in its
    top-left corner) -> float32 ``[B, 3, T, out, out]`` in [0, 255], flipped left-right
    where ``flip`` is 1."""
    _, _, h, w, _ = crops.shape
    rows = axis_weights(sizes[:, 0], out, h)  # [B, out, H]
    cols = axis_weights(sizes[:, 1], out, w)  # [B, out, W]
    flip = sizes[:, 2].bool().view(-1, 1, 1)
    cols = torch.where(flip, cols.flip(1), cols)
    x = crops.float()
    x = torch.einsum("bthwc,bpw->bthpc", x, cols)  # [B, T, H, out, 3]
    # [B, 3, T, out, out], laid out as the loader's clips are (einsum leaves it permuted)
    return torch.einsum("boh,bthpc->bctop", rows, x).contiguous()
