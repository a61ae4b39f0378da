"""Frames and audio on one presentation timeline.

Time 0 is the start of the chosen video stream. Frames: at each output time
``t = start_s + i / fps`` we take the frame on display at t (the last frame
whose timestamp is <= t) and record that frame's own timestamp, so variable
frame rates and dropped frames never shift anything. Audio: ffmpeg shifts the
decoded samples by the video start and pads or trims the start
(``aresample=async=1:first_pts=0``), so a late audio stream begins with
silence and an early one is trimmed, using the decoded frames' timestamps.

Frame decoders: decord (fast, random access) for indexed containers (MP4/MOV,
Matroska/WebM) where it can open the file and decodes the chosen stream;
otherwise an ffmpeg pipe with the same timestamp semantics: AV1 (decord cannot
open it), stream containers such as MPEG-TS, AVI or FLV (decord's frame index
is wrong there: a clapper test found flashes 0.5 s late), and any file decord
fails on.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import deque

import ffmpeg
import numpy as np
import simplejpeg

from avprep.errors import MediaError
from avprep.media.batch import FrameBatch
from avprep.media.planes import YuvLayout
from avprep.media.timeline import EPS, SequentialFrames, grid_times, output_size
from avprep.probe import AudioStream, MediaInfo
from avprep.tools import (
    StderrDrain,
    clean_message,
    ffmpeg_bin,
    filter_options,
    local_url,
    popen,
)

DECORD_CONTAINERS = ("mov", "mp4", "matroska", "webm")
MIN_GOP = 8  # frames per keyframe on average from which DecordFrames avoids decord's seeks

# ffmpeg-python hashes its arguments as UTF-8, which a file name in another encoding
# (surrogate-escaped by Python) is not: commands are built with this in its place.
_INPUT = "avprep:input"


def ffmpeg_command(stream, path: str) -> list[str]:
    """The argv of an ffmpeg-python ``stream`` built on ``ffmpeg.input(_INPUT)``."""
    return [ffmpeg_bin(), *(local_url(path) if a == _INPUT else a for a in stream.get_args())]


class DecordFrames:
    """Random-access frames from decord, resized while decoding: RGB ``[H, W, 3]`` each.

    decord decodes on a thread of its own, which keeps decoding ahead while the
    caller encodes the last segment. When a read skips frames across a keyframe,
    decord seeks to that keyframe and drops what it had decoded ahead: about a
    third more decoding on a 60 s clip with 5 s GOPs. Reads here therefore also
    take the frame before each keyframe they would skip past (one frame per GOP,
    where GOPs are long enough for seeking to cost more than that frame).
    """

    name = "decord"
    error = ""  # decord raises instead

    def __init__(self, path: str, info: MediaInfo, *, short_side_px: int, threads: int) -> None:
        import decord  # noqa: PLC0415  (heavy import, only in workers)

        decord.logging.set_level(decord.logging.QUIET)

        if not any(f in info.format_name.split(",") for f in DECORD_CONTAINERS):
            raise MediaError(f"decord: not used for {info.format_name} (no exact frame index)")
        v = info.video
        # decord applies the rotation metadata itself; width/height are display sizes.
        w, h = self.size = output_size(v, short_side_px)
        url = local_url(path)  # decord hands it to avformat_open_input as it is
        try:
            if info.n_video_streams > 1:
                native = decord.VideoReader(url, num_threads=1)
                shape = native[0].shape
                del native
                if (shape[1], shape[0]) not in ((v.width, v.height), (v.height, v.width)):
                    raise MediaError("decord opened another video stream")
            self.vr = decord.VideoReader(url, width=w, height=h, num_threads=threads)
            ts = self.vr.get_frame_timestamp(range(len(self.vr)))
        except MediaError:
            raise
        except Exception as e:  # decord raises DECORDError and RuntimeError alike
            raise MediaError(decord_message(e)) from e
        if len(ts) == 0 or np.any(np.diff(ts[:, 0]) < 0):
            raise MediaError("decord: no frames or unordered timestamps")
        self.starts = ts[:, 0].astype(np.float64)
        self.end_s = float(ts[-1, 1])
        try:
            self.keys = np.asarray(self.vr.get_key_indices(), np.int64)
        except Exception:  # no index of keyframes: leave the reads as they are
            self.keys = np.zeros(0, np.int64)
        self.pad_keys = len(self.keys) > 0 and len(self.starts) >= MIN_GOP * len(self.keys)
        self.next_index = 0  # where decord's decoding stands: one past the last frame read

    def read(self, start_s: float, end_s: float, fps: float) -> FrameBatch:
        """Frames ``[n, H, W, 3]`` uint8 RGB shown at the grid times, with their timestamps."""
        times = grid_times(start_s, min(end_s, self.end_s), fps)
        idx = np.searchsorted(self.starts, times + EPS, side="right") - 1
        idx = np.clip(idx, 0, len(self.starts) - 1)
        uniq, inverse = np.unique(idx, return_inverse=True)
        read = uniq
        if self.pad_keys and len(uniq):
            passed = self.keys[(self.keys > self.next_index) & (self.keys <= uniq[-1])]
            read = np.union1d(uniq, passed - 1)
        try:
            frames = self.vr.get_batch(read.tolist()).asnumpy()
        except Exception as e:
            raise MediaError(decord_message(e)) from e
        if len(read):
            self.next_index = int(read[-1]) + 1
        if len(read) != len(uniq):
            frames = frames[np.searchsorted(read, uniq)]
        if len(uniq) != len(idx):  # a frame shown at several grid times
            frames = frames[inverse]
        return FrameBatch(frames, self.starts[idx])

    @staticmethod
    def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
        return simplejpeg.encode_jpeg(
            frame, quality=quality, colorspace="RGB", colorsubsampling="420"
        )

    def close(self) -> None:
        self.vr = None


_DECORD_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")


def decord_message(e: Exception) -> str:
    """decord's error without its timestamp and source-file prefix, one line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "decord: " + _DECORD_PREFIX.sub("", text)[:200]


_PTS = re.compile(r"pts_time:\s*(-?[0-9.eE+-]+)")
_ERROR = re.compile(r"(^|\] )\[(error|fatal|panic)\] ")


def showinfo_options() -> dict:
    """showinfo without its checksums of every full-size frame, which cost a third as
    much as decoding the frames at 360p, where the installed ffmpeg has the option."""
    return {"checksum": 0} if "checksum" in filter_options("showinfo") else {}


class FfmpegFrames(SequentialFrames):
    """Sequential frames from an ffmpeg pipe; timestamps from its showinfo filter.

    ffmpeg applies the rotation itself (autorotate) and scales; every decoded
    frame is passed through (no frame-rate conversion) and selected here with
    the same rule as DecordFrames. Segments must be read in time order.
    ``error`` is the last error ffmpeg logged ("partial file" for a truncated
    file), complete once the stream is exhausted.

    Frames stay in YUV 4:2:0, converted while scaling to the full-range BT.601
    that JPEG (JFIF) stores, and go to the JPEG encoder as planes: no RGB
    conversion on either side (a 60 s 360p clip: 1.85 s of CPU for the ffmpeg
    process instead of 2.15 s for RGB out). A frame is one flat array, Y then
    U then V; ``encode_jpeg`` takes it apart.
    """

    name = "ffmpeg"

    def __init__(self, path: str, info: MediaInfo, *, short_side_px: int, threads: int) -> None:
        v = info.video
        self.w, self.h = self.size = output_size(v, short_side_px)
        self.layout = YuvLayout(self.w, self.h)
        self.frame_bytes = self.layout.frame_bytes
        self.v_start = v.start_s
        self.frame_s = 1.0 / v.avg_fps if v.avg_fps else 0.04
        stream = (
            ffmpeg.input(_INPUT, copyts=None, threads=threads)[f"v:{v.type_index}"]
            .filter("showinfo", **showinfo_options())
            .filter("scale", self.w, self.h, out_color_matrix="bt601", out_range="full")
            .output("pipe:", format="rawvideo", pix_fmt="yuv420p", vsync="passthrough")
            .global_args("-nostdin", "-hide_banner", "-loglevel", "level+info", "-nostats")
        )
        cmd = ffmpeg_command(stream, path)
        self.path = path
        self.error = ""
        self._pts: deque[float | None] = deque()
        self._cv = threading.Condition()
        self.proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.drain = StderrDrain(self.proc, on_line=self._on_line, path=path)
        self._next: tuple[np.ndarray, float] | None = None
        self._prev: tuple[np.ndarray, float] | None = None
        self._eof = False
        self._advance()
        if self._next is None:
            self.close()
            raise MediaError(
                f"decode_error: {self.error or self.drain.last() or 'no video frames decoded'}"
            )

    def _on_line(self, line: str | None) -> bool:
        with self._cv:
            if line is None:
                self._pts.append(None)
                self._cv.notify_all()
                return True
            if "Parsed_showinfo" not in line:
                if _ERROR.search(line):
                    self.error = clean_message(line, self.path)
                return False
            m = _PTS.search(line)
            if m:
                self._pts.append(float(m.group(1)))
                self._cv.notify_all()
            return True

    def _advance(self) -> None:
        buf = self.proc.stdout.read(self.frame_bytes)
        if len(buf) < self.frame_bytes:
            self._next, self._eof = None, True
            self.proc.wait()
            self.drain.join()  # every error line is read
            return
        with self._cv:
            if not self._cv.wait_for(lambda: len(self._pts) > 0, timeout=30):
                raise MediaError("decode_error: ffmpeg sent a frame without a timestamp")
            pts = self._pts.popleft()
        if pts is None:
            raise MediaError("decode_error: ffmpeg sent a frame without a timestamp")
        self._next = (np.frombuffer(buf, np.uint8), pts - self.v_start)

    def _row(self, frame: np.ndarray) -> np.ndarray:
        return frame  # ffmpeg already scaled it into Y|U|V

    def encode_jpeg(self, frame: np.ndarray, quality: int) -> bytes:
        return self.layout.encode_jpeg(frame, quality)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


DECODERS = {"decord": DecordFrames, "ffmpeg": FfmpegFrames}


def open_frames(path: str, info: MediaInfo, *, short_side_px: int, threads: int = 1, decoder: str):
    """Open frames with ``decoder`` ("decord" or "ffmpeg"); MediaError if it cannot.
    (PyAV's frames come from an opened container: ``avprep.media.frames.PyavFrames``.)"""
    return DECODERS[decoder](path, info, short_side_px=short_side_px, threads=threads)


class AudioReader:
    """Mono float32 audio at ``sample_rate`` from ffmpeg, sample 0 at time 0.

    ``read(n)`` returns the next n samples, zero-padded past the end.
    """

    def __init__(
        self, path: str, audio: AudioStream, video_start_s: float, sample_rate: int
    ) -> None:
        self.sample_rate = sample_rate
        shift = f"PTS-{video_start_s!r}/TB"
        stream = (
            ffmpeg.input(_INPUT, copyts=None)[f"a:{audio.type_index}"]
            .filter("asetpts", shift)
            .filter("aresample", sample_rate, **{"async": 1, "first_pts": 0})
            .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate)
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        )
        self.proc = popen(
            ffmpeg_command(stream, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.drain = StderrDrain(self.proc, path=path)
        self.samples_read = 0
        self.exhausted = False

    def read(self, n: int) -> np.ndarray:
        buf = self.proc.stdout.read(4 * n) if not self.exhausted else b""
        got = len(buf) // 4
        if got < n:
            self.exhausted = True
        out = np.zeros(n, np.float32)
        out[:got] = np.frombuffer(buf[: 4 * got], np.float32)
        self.samples_read += got
        return out

    def skip_to(self, sample: int) -> None:
        while self.samples_read < sample and not self.exhausted:
            self.read(min(sample - self.samples_read, 1 << 20))

    def check(self) -> None:
        """Raise if ffmpeg produced no audio at all and reported an error."""
        if self.samples_read == 0 and self.exhausted:
            self.proc.wait()
            self.drain.join()
            if self.proc.returncode != 0:
                raise MediaError(f"decode_error: {self.drain.last() or 'audio decode failed'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
