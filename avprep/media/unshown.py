"""Frames no grid time shows, left undecoded where that is exact.

At 25 fps stored at 16 fps, a third of the frames are never stored; at 30 fps,
almost half. A frame that no other frame is predicted from (a non-reference
B-frame) can then be skipped by the decoder: it is told ``skip_frame = NONREF``
for that one packet, and decodes every other packet as usual. The frames it
returns are the same pictures, so the frames stored are the same bytes.

Whether a frame is shown needs the time its successor on display replaces it:
the smallest timestamp above its own among the packets sent before it and those
still queued. The queue is read ahead until a packet's decoding timestamp
reaches that candidate; no later packet can come on display earlier, because
timestamps are never below decoding timestamps, which only grow. Where that
cannot be settled (a packet without timestamps, timestamps that break those two
rules, more than ``LOOKAHEAD`` packets ahead, the last frame) the frame is
decoded, and a stream that breaks the rules once is decoded whole from then on.
A wrong answer can only ever be "shown": packets sent before the skipper began,
or forgotten since, only widen a frame's interval.

Only codecs whose NONREF skipping is decided frame by frame, for frames that are
truly never referenced, take part: H.264 and HEVC (``SKIPPABLE``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

SKIPPABLE = frozenset({"h264", "hevc"})
LOOKAHEAD = 64  # packets read ahead, at most, to find a frame's successor
SENT = 20  # packets sent that are remembered: more than any codec's reordering (H.264: 16)
EPS = 1e-6


class SegmentGrid:
    """The output times of the sharder: ``n * segment_s + i / fps`` for every segment n
    from 0, ``i < ceil(segment_s * fps)``: the grid of ``timeline.grid_times`` per segment."""

    def __init__(self, fps: float, segment_s: float) -> None:
        self.fps, self.segment_s = fps, segment_s
        self.per_segment = max(0, math.ceil(segment_s * fps - 1e-6))

    def any_between(self, a: float, b: float) -> bool:
        """Whether some output time t has ``a <= t <= b`` (seconds on the video timeline)."""
        if b < 0 or b < a:
            return False
        first = max(0, math.floor(max(a, 0.0) / self.segment_s))
        for n in range(first, math.floor(b / self.segment_s) + 1):
            base = n * self.segment_s
            i = max(0, math.ceil((max(a, base) - base) * self.fps - 1e-9))
            if i < self.per_segment and base + i / self.fps <= b:
                return True
        return False


class UnshownSkipper:
    """Sets ``codec.skip_frame`` before each video packet is sent: NONREF when no output
    time falls while the packet's frame is on display, else DEFAULT.

    ``shown(t0, t1)``: whether an output time lies in [t0, t1] (seconds on the video's
    timeline); ``time_base``: the stream's, as a float; ``start_s``: the stream's start,
    subtracted as the frame reader does."""

    def __init__(self, codec, *, time_base: float, start_s: float,
                 shown: Callable[[float, float], bool]) -> None:  # fmt: skip
        self.codec = codec
        self.tb, self.start_s, self.shown = time_base, start_s, shown
        self.sent: deque[int] = deque(maxlen=SENT)  # timestamps of the last packets sent
        self.last_dts: int | None = None
        self.broken = False  # the stream broke the timestamp rules: decode everything
        self.skipping = False
        self.skipped = 0  # packets sent with NONREF (non-reference ones among them not decoded)

    def before(self, packet, queue: deque, pull: Callable[[], bool]) -> None:
        """Called with the packet about to be sent, its stream's queue of later packets
        and a function that demuxes one more packet (False at the end of the file)."""
        skip = not self.broken and self._unshown(packet, queue, pull)
        if skip != self.skipping:
            self.codec.skip_frame = "NONREF" if skip else "DEFAULT"
            self.skipping = skip
        self.skipped += skip
        if packet.pts is not None:
            self.sent.append(packet.pts)

    def _valid(self, packet, prev_dts: int | None) -> bool:
        ok = (
            packet.pts is not None
            and packet.dts is not None
            and packet.pts >= packet.dts
            and (prev_dts is None or packet.dts > prev_dts)
        )
        if not ok:
            self.broken = True
        return ok

    def _unshown(self, packet, queue: deque, pull: Callable[[], bool]) -> bool:
        if not self._valid(packet, self.last_dts):
            return False
        self.last_dts = packet.dts
        successor = self._successor(packet, queue, pull)
        if successor is None:
            return False
        t0 = packet.pts * self.tb - self.start_s
        t1 = successor * self.tb - self.start_s
        return not self.shown(t0 - 2 * EPS, t1)

    def _successor(self, packet, queue: deque, pull: Callable[[], bool]) -> int | None:
        """The smallest timestamp above ``packet``'s, or None where it cannot be settled."""
        p = packet.pts
        best = None
        for q in self.sent:
            if q > p and (best is None or q < best):
                best = q
        prev_dts, i = packet.dts, 0
        while True:
            while i < len(queue):
                q = queue[i]
                if q.size == 0:  # a flush marker: nothing after it
                    return best
                if not self._valid(q, prev_dts):
                    return None
                if best is not None and q.dts >= best:
                    return best
                if q.pts > p and (best is None or q.pts < best):
                    best = q.pts
                prev_dts, i = q.dts, i + 1
            if i >= LOOKAHEAD:
                return None
            if not pull():
                return best if len(queue) == i else None
