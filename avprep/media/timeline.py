"""The presentation timeline every decoder shares: output frame times and stored size.

Time 0 is the start of the chosen video stream. At each output time
``t = start_s + i / fps`` the frame on display is the last one whose timestamp is
<= t (+ ``EPS``), and that frame's own timestamp is recorded.
"""

from __future__ import annotations

import numpy as np

from avprep.media.batch import FrameBatch
from avprep.probe import VideoStream

EPS = 1e-6


def output_size(video: VideoStream, short_side_px: int) -> tuple[int, int]:
    """Stored (width, height) in display orientation with the short side fixed."""
    dw, dh = video.display_size
    if dw <= dh:
        return short_side_px, max(1, round(dh * short_side_px / dw))
    return max(1, round(dw * short_side_px / dh)), short_side_px


def grid_times(start_s: float, end_s: float, fps: float) -> np.ndarray:
    """Output frame times in [start_s, end_s) at ``fps``."""
    n = max(0, int(np.ceil((end_s - start_s) * fps - 1e-6)))
    return start_s + np.arange(n) / fps


class SequentialFrames:
    """The display rule for readers that decode every frame once, in order (PyAV, the
    ffmpeg pipe). A subclass keeps ``_prev``/``_next`` as ``(frame, t)`` or None and
    ``_eof``, defines ``_advance()`` (decode the next frame into ``_next``), ``_row(frame)``
    (a flat Y|U|V row), ``layout`` and ``frame_s``. Segments must be read in time order."""

    _prev: tuple | None
    _next: tuple | None
    _eof: bool
    frame_s: float

    @property
    def end_s(self) -> float:
        """Known end of the video so far (exact once the stream is exhausted)."""
        last = self._next or self._prev
        return float("inf") if not self._eof else (last[1] + self.frame_s if last else 0.0)

    def read(self, start_s: float, end_s: float, fps: float) -> FrameBatch:
        """A FrameBatch: rows ``[n, frame_bytes]`` uint8 (Y, U, V planes) of the frames
        shown at the grid times in [start_s, end_s), with their own timestamps."""
        rows, times = [], []
        for t in grid_times(start_s, end_s, fps):
            while self._next is not None and self._next[1] <= t + EPS:
                self._prev = self._next
                self._advance()
            shown = self._prev or self._next
            if shown is None:
                break
            if self._next is None and t >= shown[1] + self.frame_s - EPS:
                break  # past the last frame: the stream ended early
            rows.append(self._row(shown[0]))
            times.append(shown[1])
        if not rows:
            return FrameBatch(np.zeros((0, self.layout.frame_bytes), np.uint8), np.zeros(0))
        return FrameBatch(np.stack(rows), np.asarray(times))
