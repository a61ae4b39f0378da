"""PyavAudio: mono float32 audio at the target rate, sample 0 at the video's start.

Decoded from the shared container and resampled in-process (``av.AudioResampler``,
libswresample, as the ffmpeg CLI's ``aresample``). Each resampled chunk goes where
its timestamp says on the video's timeline: a late stream begins with silence, an
early one is trimmed, and later gaps or overlaps of more than ``HARD_COMP_S`` are
filled with silence or cut, as ``aresample=async=1:first_pts=0`` does in the ffmpeg
path (smaller jitter is left alone, as there).
"""

from __future__ import annotations

from collections import deque

import av
import numpy as np

from avprep.errors import MediaError
from avprep.media.container import Container

HARD_COMP_S = 0.1  # aresample's min_hard_comp


class PyavAudio:
    """``read(n)`` returns the next n samples, zero-padded past the end."""

    def __init__(self, container: Container, *, video_start_s: float, sample_rate: int) -> None:
        self.container = container
        self.sample_rate = sample_rate
        self.offset = video_start_s
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self._frames = container.audio_frames()
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0  # samples in _chunks
        self._end = None  # timeline index one past the last sample placed, None before any
        self._tb = None  # (the output time base, as a float)
        self.samples_read = 0
        self.exhausted = False
        self._done = False

    def _place(self, out: av.AudioFrame) -> None:
        # mono float32, packed: one plane (to_ndarray and Fraction timestamps cost ~3x more)
        data = np.frombuffer(out.planes[0], np.float32, count=out.samples).copy()
        if out.pts is not None:
            if self._tb is None:
                self._tb = (out.time_base, float(out.time_base))
            tb = self._tb[1] if out.time_base == self._tb[0] else float(out.time_base)
            at = round((out.pts * tb - self.offset) * self.sample_rate)
        else:
            at = self._end or 0
        end = self._end if self._end is not None else 0
        if self._end is None or abs(at - end) > HARD_COMP_S * self.sample_rate:
            if at > end:
                self._push(np.zeros(at - end, np.float32))
            elif at < end:
                data = data[end - at :]
        self._push(data)

    def _push(self, data: np.ndarray) -> None:
        if len(data):
            self._chunks.append(data)
            self._buffered += len(data)
            self._end = (self._end or 0) + len(data)

    def _fill(self, n: int) -> None:
        while self._buffered < n and not self._done:
            frame = next(self._frames, None)
            try:
                outs = self.resampler.resample(frame)  # None flushes
            except av.FFmpegError as e:
                self.container.error = f"audio: {e.strerror or e}"
                outs = []
            if frame is None:
                self._done = True
            for out in outs:
                self._place(out)

    def read(self, n: int) -> np.ndarray:
        self._fill(n)
        out = np.zeros(n, np.float32)
        got = 0
        while got < n and self._chunks:
            chunk = self._chunks.popleft()
            take = min(n - got, len(chunk))
            out[got : got + take] = chunk[:take]
            if take < len(chunk):
                self._chunks.appendleft(chunk[take:])
            got += take
        self._buffered -= got
        self.samples_read += got
        if got < n:
            self.exhausted = True
        return out

    def skip_to(self, sample: int) -> None:
        while self.samples_read < sample and not self.exhausted:
            self.read(min(sample - self.samples_read, 1 << 20))

    def check(self) -> None:
        """Raise if no audio was decoded at all and the file reported an error."""
        if self.samples_read == 0 and self.exhausted and self.container.error:
            raise MediaError(f"decode_error: {self.container.error}")

    def close(self) -> None:
        self._chunks.clear()
