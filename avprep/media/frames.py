"""PyavFrames: the frames on display at each grid time, decoded once, in order, by PyAV.

Every frame is decoded (single-threaded); only those that will be stored are
scaled, by one ``VideoReformatter`` reused across frames (a fresh scaler per frame
costs several times the scaling). Frames stay YUV 4:2:0, converted while scaling to
the full-range BT.601 that JPEG stores, and are rotated as the display matrix says.
Timestamps follow ``avprep.decode``: at each grid time the last frame whose
timestamp is <= t, with that frame's own timestamp recorded.
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from avprep.media.container import Container
from avprep.media.planes import YuvLayout
from avprep.media.timeline import SequentialFrames, output_size
from avprep.media.unshown import SegmentGrid

INTERPOLATION = Interpolation.AREA  # 640x360 -> 228x128: 0.15 ms a frame; BILINEAR 0.24 (measured)


def _plane(plane) -> np.ndarray:
    """One plane of a frame as ``[height, width]`` uint8 (a view; no copy)."""
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


class PyavFrames(SequentialFrames):
    """Frames of ``container``'s chosen video stream, read segment by segment in time order.

    With ``grid`` (the output times every ``read`` will ask for), the frames none of
    them shows are left undecoded where the codec allows (``avprep.media.unshown``);
    ``read`` then takes only that grid's segments.

    ``read`` returns a FrameBatch of flat Y|U|V rows (``layout``); ``end_s`` is
    infinite until the stream is exhausted, then the end of its last frame.
    """

    name = "pyav"

    def __init__(
        self, container: Container, *, short_side_px: int, grid: SegmentGrid | None = None
    ) -> None:
        v = container.info.video
        self.container = container
        self.w, self.h = self.size = output_size(v, short_side_px)
        self.layout = YuvLayout(self.w, self.h)
        self.turns = v.rotation_deg // 90  # counter-clockwise quarter turns (np.rot90's k)
        self.scaled = (self.h, self.w) if self.turns % 2 else (self.w, self.h)
        self.v_start = v.start_s
        self.frame_s = 1.0 / v.avg_fps if v.avg_fps else 0.04
        self.time_base = float(
            container.time_base(v.index)
        )  # a float: Fractions cost 20 us a frame
        self.reformatter = VideoReformatter()
        self._frames: Iterator[av.VideoFrame] = container.video_frames()
        self._prev: tuple[av.VideoFrame, float] | None = None
        self._next: tuple[av.VideoFrame, float] | None = None
        self._eof = False
        # (frame, its row): the frame itself, as its id() is reused once a freed frame's memory is
        self._converted: tuple[av.VideoFrame, np.ndarray] | None = None
        self.grid = grid
        if grid is not None:  # only the frames it shows need decoding
            container.skip_unshown(grid.any_between)
        self._advance()

    @property
    def error(self) -> str:
        return self.container.error

    def _advance(self) -> None:
        frame = next(self._frames, None)
        if frame is None:
            self._next, self._eof = None, True
            return
        last = self._next or self._prev
        if frame.pts is None:  # no timestamp: one frame period after the last
            t = last[1] + self.frame_s if last else 0.0
        else:
            t = frame.pts * self.time_base - self.v_start
        self._next = (frame, t)

    def read(self, start_s: float, end_s: float, fps: float):
        g = self.grid
        if g is not None:
            n = round(start_s / g.segment_s)
            if (
                fps != g.fps
                or abs(start_s - n * g.segment_s) > 1e-9
                or end_s > start_s + g.segment_s
            ):
                raise ValueError(f"read({start_s}, {end_s}, {fps}) is off the frames' grid")
        return super().read(start_s, end_s, fps)

    def _row(self, frame: av.VideoFrame) -> np.ndarray:
        """``frame`` scaled, converted to full-range BT.601 YUV 4:2:0 and rotated: one row."""
        if self._converted is not None and self._converted[0] is frame:
            return self._converted[1]  # shown at several grid times: converted once
        out = self.reformatter.reformat(
            frame,
            *self.scaled,
            "yuv420p",
            dst_colorspace=Colorspace.ITU601,
            interpolation=INTERPOLATION,
            src_color_range=frame.color_range,
            dst_color_range=ColorRange.JPEG,
            threads=1,
        )
        planes = [_plane(p) for p in out.planes]
        row = self.layout.join(*(np.rot90(p, self.turns) for p in planes) if self.turns else planes)
        self._converted = (frame, row)
        return row

    def encode_jpeg(self, row: np.ndarray, quality: int) -> bytes:
        return self.layout.encode_jpeg(row, quality)

    def close(self) -> None:
        self._prev = self._next = self._converted = None
