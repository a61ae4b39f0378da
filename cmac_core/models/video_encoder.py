"""R(2+1)D video encoder (Tran et al. 2018), returning its conv5 feature map.

Each 3x3x3 convolution is factorised into a 1x3x3 spatial and a 3x1x1 temporal
convolution with ``mid`` channels chosen to match the 3D convolution's
parameter count, as in torchvision's ``r2plus1d_18``. Widths (64, 128, 256,
512) with blocks (2, 2, 2, 2) is R(2+1)D-18.
"""

from __future__ import annotations

import torch
from torch import nn


def _mid(c_in: int, c_out: int) -> int:
    return (c_in * c_out * 27) // (c_in * 9 + 3 * c_out)


class Conv2Plus1D(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, time_stride: int | None = None
    ) -> None:
        mid = _mid(c_in, c_out)
        time_stride = stride if time_stride is None else time_stride
        super().__init__(
            nn.Conv3d(
                c_in, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid, c_out, (3, 1, 1), stride=(time_stride, 1, 1), padding=(1, 0, 0), bias=False
            ),
        )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, time_stride: int | None = None) -> None:
        super().__init__()
        time_stride = stride if time_stride is None else time_stride
        self.conv1 = nn.Sequential(
            Conv2Plus1D(c_in, c_out, stride, time_stride),
            nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(Conv2Plus1D(c_out, c_out), nn.BatchNorm3d(c_out))
        self.down = None
        if stride != 1 or time_stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=(time_stride, stride, stride), bias=False),
                nn.BatchNorm3d(c_out),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return self.relu(self.conv2(self.conv1(x)) + skip)


class VideoEncoder(nn.Module):
    """``[B, 3, T, H, W]`` -> conv5 map ``[B, C, T/8, H/16, W/16]`` (C = widths[-1]), or
    ``[B, C, T, H/16, W/16]`` with ``keep_time`` (stages 2-4 stride in space only: a
    synchronization pretext needs the frames' times; same weights' shapes). With ``motion``
    the stem also takes each frame minus the one before it (zero for the first frame):
    residual frames (Tao et al. 2020), 6 input channels.

    Where each grid cell looks: cell ``(i, j)`` of the conv5 map is centred on input
    pixel ``(STRIDE_PX * i + ORIGIN_PX, STRIDE_PX * j + ORIGIN_PX)`` (pixel indices), not
    on the middle of the 16 px square it would tile: the stem (7 x 7, stride 2, padding 3)
    and each strided 3 x 3 conv (padding 1) centre their output ``k`` on input ``2 k``.
    ``cmac_core.grid_maps`` places maps by these numbers; tests/test_grid_maps.py measures
    them from the network's gradients."""

    STRIDE_PX = 16
    ORIGIN_PX = 0.0

    def __init__(
        self,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        *,
        keep_time: bool = False,
        motion: bool = False,
    ) -> None:
        super().__init__()
        self.motion = motion
        c_in = 6 if motion else 3
        stem_mid = max(4, (c_in * widths[0] * 49) // (c_in * 49 + 3 * widths[0]))
        self.stem = nn.Sequential(
            nn.Conv3d(c_in, stem_mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, widths[0], (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, c_in = [], widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(
                    *[
                        BasicBlock(
                            c_in if j == 0 else c_out,
                            c_out,
                            stride if j == 0 else 1,
                            (1 if keep_time else stride) if j == 0 else 1,
                        )
                        for j in range(n)
                    ]
                )
            )
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.input_format = torch.contiguous_format
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if self.motion:
            video = torch.cat([video, residual_frames(video)], dim=1)
        # channels-last input where the weights are (models.placement.use_channels_last)
        return self.layers(self.stem(video.contiguous(memory_format=self.input_format)))


def residual_frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> each frame minus the one before it; the first frame's is zero."""
    return torch.cat([torch.zeros_like(video[:, :, :1]), video.diff(dim=2)], dim=2)
