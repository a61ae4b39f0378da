"""2D ResNet audio encoder over the log-mel spectrogram, returning its conv5 map.

Widths (64, 128, 256, 512) with blocks (2, 2, 2, 2) is ResNet-18. The map keeps
its frequency axis: CMAC attends over frequency bins. ``freq_stride`` (4, 8, 16
or 32) is how much the mel axis is divided: below 32 the last stages stride 2
in time only, which changes no weight's shape.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return self.relu(self.body(x) + skip)


class AudioEncoder(nn.Module):
    """``[B, 1, n_mels, n_columns]`` -> conv5 map ``[B, C, n_mels/freq_stride, n_columns/32]``
    (``n_columns/4`` with ``keep_time``: stages 2-4 keep time, as lla's tokens need)."""

    def __init__(
        self,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        *,
        freq_stride: int = 32,
        keep_time: bool = False,
    ) -> None:
        super().__init__()
        # stages 1-3 stride 2 in time; the first log2(freq_stride / 4) of them in frequency too
        freq_halvings = {4: 0, 8: 1, 16: 2, 32: 3}[freq_stride]
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers, c_in = [], widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else (2 if i <= freq_halvings else 1, 1 if keep_time else 2)
            layers.append(
                nn.Sequential(
                    *[
                        BasicBlock2d(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1)
                        for j in range(n)
                    ]
                )
            )
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.input_format = torch.contiguous_format
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        # channels-last input where the weights are (models.placement.use_channels_last)
        return self.layers(self.stem(spec.contiguous(memory_format=self.input_format)))
