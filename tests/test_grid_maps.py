"""Maps sit where the encoder's cells look (cmac_core.grid_maps).

Measured, not assumed: the centre of each grid cell's receptive field comes from the
video encoder's own gradients, with every convolution made a uniform (symmetric) kernel
so that the centre is the geometry's (strides and padding), not the random weights'.
Before the fix the maps put cell k at 16 k + 7.5 px, half a cell right of and below where
it looks, and the avid arm's peaks sat +8 / +6 px (rows / cols) off the sounding
object's centre on average (docs/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cmac_core.config import preset
from cmac_core.grid_maps import to_pixels
from cmac_core.models.video_encoder import VideoEncoder


@pytest.mark.parametrize("keep_time", [False, True])
def test_each_cell_looks_where_the_encoder_says(keep_time: bool) -> None:
    m = preset("tiny").model
    encoder = VideoEncoder(m.video_widths, m.video_blocks, keep_time=keep_time).eval()
    with torch.no_grad():
        for layer in encoder.modules():
            if isinstance(layer, nn.Conv3d):
                layer.weight.fill_(1.0 / layer.weight[0].numel())
    video = torch.full((1, 3, 4, 112, 112), 0.5, requires_grad=True)
    out = encoder(video)  # [1, C, t, 7, 7]
    gh, gw = out.shape[-2:]
    assert (gh, gw) == (7, 7)
    rows, cols = np.arange(112.0), np.arange(112.0)
    for i, j in [(2, 2), (3, 3), (2, 4), (4, 3)]:  # inner cells: their fields stay inside
        (grad,) = torch.autograd.grad(out[..., i, j].sum(), video, retain_graph=True)
        weight = grad.abs().sum(dim=(0, 1, 2)).numpy()  # [112, 112]
        centre_r = (weight.sum(1) * rows).sum() / weight.sum()
        centre_c = (weight.sum(0) * cols).sum() / weight.sum()
        expected_r = encoder.STRIDE_PX * i + encoder.ORIGIN_PX
        expected_c = encoder.STRIDE_PX * j + encoder.ORIGIN_PX
        assert abs(centre_r - expected_r) < 0.25 and abs(centre_c - expected_c) < 0.25, (
            (i, j),
            (centre_r, centre_c),
            (expected_r, expected_c),
        )


def hot_cell(i: int, j: int, shape=(7, 7)) -> torch.Tensor:
    grid = torch.zeros(shape)
    grid[i, j] = 1.0
    return grid


@pytest.mark.parametrize("i,j", [(0, 0), (3, 5), (6, 6), (1, 4)])
def test_a_cell_peaks_on_its_centre_at_the_frames_size(i: int, j: int) -> None:
    m = to_pixels(hot_cell(i, j), (112, 112), (112, 112), stride_px=16, origin_px=0.0)
    assert m.shape == (112, 112) and m.dtype == np.float32
    assert np.unravel_index(int(np.argmax(m)), m.shape) == (16 * i, 16 * j)
    assert m.max() == pytest.approx(1.0)
    # halfway to the next centre, half the value: bilinear between centres
    if i < 6:
        assert m[16 * i + 8, 16 * j] == pytest.approx(0.5, abs=1e-6)


def test_a_frame_larger_than_the_models_input_scales_the_place() -> None:
    """A 224 px frame resized to 112 for the model: input pixel 48 (cell 3) is frame
    pixel 96.5, so the frame's peak is on pixel 96 or 97 with equal value."""
    m = to_pixels(hot_cell(3, 3), (112, 112), (224, 224), stride_px=16, origin_px=0.0)
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    assert r in (96, 97) and c in (96, 97)
    assert m[96, 96] == pytest.approx(m[97, 97])


def test_beyond_the_outermost_centres_the_outermost_value_stays() -> None:
    grid = torch.arange(49, dtype=torch.float32).reshape(7, 7)
    m = to_pixels(grid, (112, 112), (112, 112), stride_px=16, origin_px=0.0)
    assert np.allclose(m[96:, 96:], 48.0)  # past the last centre (96): the last cell's value
    assert m[0, 0] == pytest.approx(0.0)
    assert np.allclose(to_pixels(torch.full((7, 7), 2.5), (112, 112), (120, 90),
                                 stride_px=16, origin_px=0.0), 2.5)  # fmt: skip


def test_a_non_square_frame_keeps_its_shape() -> None:
    m = to_pixels(hot_cell(2, 5, (7, 9)), (112, 144), (224, 288), stride_px=16, origin_px=0.0)
    assert m.shape == (224, 288)
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    assert abs(r - 64.5) <= 0.5 and abs(c - 160.5) <= 0.5
