"""YuvLayout: a stored frame as one flat uint8 row, Y then U then V (4:2:0), and its JPEG.

The planes are full-range BT.601, what JPEG (JFIF) stores, so they go to the encoder
as they are: no RGB conversion on either side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simplejpeg


@dataclass(frozen=True)
class YuvLayout:
    width: int
    height: int
    chroma: tuple[int, int] = field(init=False)  # (rows, columns) of U and of V
    frame_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        ch, cw = (self.height + 1) // 2, (self.width + 1) // 2
        object.__setattr__(self, "chroma", (ch, cw))
        object.__setattr__(self, "frame_bytes", self.width * self.height + 2 * ch * cw)

    def split(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Y ``[H, W]``, U and V ``[ceil(H/2), ceil(W/2)]`` views of one flat row."""
        y_end = self.width * self.height
        u_end = y_end + self.chroma[0] * self.chroma[1]
        return (
            row[:y_end].reshape(self.height, self.width),
            row[y_end:u_end].reshape(self.chroma),
            row[u_end:].reshape(self.chroma),
        )

    def join(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """One flat row from three planes of this layout's shapes."""
        row = np.empty(self.frame_bytes, np.uint8)
        for dst, src in zip(self.split(row), (y, u, v), strict=True):
            dst[...] = src
        return row

    def encode_jpeg(self, row: np.ndarray, quality: int) -> bytes:
        y, u, v = self.split(row)
        return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=quality)
