"""A value per cell of the video encoder's grid -> a map at the frame's pixels, each cell's
value placed where that cell looks.

The encoder's cell ``k`` is centred on input pixel ``STRIDE_PX * k + ORIGIN_PX``
(``VideoEncoder``), not on the middle of the ``STRIDE_PX`` square it would tile: plain
upsampling (``F.interpolate(..., align_corners=False)``) puts it 7.5 px further right and
down at a stride of 16, half a cell, and every map drawn or scored that way sits off the
object it found by that much. Between cell centres the map is bilinear; beyond the
outermost centres it keeps the outermost value.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _cell_coords(n_frame: int, n_input: int, cells: int, stride_px: float, origin_px: float):
    """Normalised grid coordinates (-1 .. 1 between the first and last cell centres) of
    the ``n_frame`` pixels of a frame resized to ``n_input`` pixels for the model."""
    at_input = (torch.arange(n_frame, dtype=torch.float64) + 0.5) * (n_input / n_frame) - 0.5
    cell = (at_input - origin_px) / stride_px
    return 2 * cell / (cells - 1) - 1 if cells > 1 else torch.zeros_like(cell)


def to_pixels(
    grid: torch.Tensor,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    *,
    stride_px: float,
    origin_px: float,
) -> np.ndarray:
    """``grid [gh, gw]`` for a model input of ``input_hw`` pixels, resized (as
    ``F.interpolate`` resizes, half-pixel centres) from a frame of ``frame_hw`` pixels ->
    float32 ``[h, w]`` at the frame's pixels."""
    gh, gw = grid.shape
    rows = _cell_coords(frame_hw[0], input_hw[0], gh, stride_px, origin_px)
    cols = _cell_coords(frame_hw[1], input_hw[1], gw, stride_px, origin_px)
    where = torch.stack(torch.broadcast_tensors(cols[None, :], rows[:, None]), dim=-1)
    values = grid.detach().reshape(1, 1, gh, gw).float().cpu()
    out = F.grid_sample(values, where[None].float(), mode="bilinear", padding_mode="border",
                        align_corners=True)  # fmt: skip
    return out[0, 0].numpy()
