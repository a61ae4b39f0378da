"""FrameBatch: the frames a decoder shows at a segment's grid times, with their timestamps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameBatch:
    """``data``: ``[n, ...]`` uint8, one row per grid time (the layout is the decoder's:
    flat Y|U|V planes for PyAV and the ffmpeg pipe, ``[n, H, W, 3]`` RGB for decord);
    ``pts_seconds``: ``[n]`` float64, each frame's own timestamp on the video timeline."""

    data: np.ndarray
    pts_seconds: np.ndarray

    def __len__(self) -> int:
        return len(self.pts_seconds)

    def before(self, end_s: float) -> FrameBatch:
        """The frames whose timestamps are before ``end_s``."""
        keep = self.pts_seconds < end_s
        return FrameBatch(self.data[keep], self.pts_seconds[keep])
