"""Media facts from ffprobe: streams, start times, rotation, duration.

Stream choice (deliberate and the same everywhere): among streams of a type,
ignoring attached pictures (cover art), prefer the default disposition, then
the most pixels (video) or channels (audio), then the highest bit rate, then
the lowest index. For video this matches ffmpeg's ``av_find_best_stream``,
which is what decord opens, on the files we have seen; ``decode`` still checks.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from avprep.errors import MediaError
from avprep.tools import clean_message, ffprobe_bin, local_url, run


@dataclass(frozen=True)
class VideoStream:
    index: int  # index among all streams of the file
    type_index: int  # index among video streams (ffmpeg's 0:v:N)
    codec: str
    width: int  # coded size, before rotation
    height: int
    sar: float  # sample (pixel) aspect ratio
    rotation_deg: int  # display-matrix rotation as ffprobe reports it (counter-clockwise), 0..270
    start_s: float  # container time of the first frame
    duration_s: float | None
    avg_fps: float | None

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown: pixel aspect applied, then rotation."""
        w = max(1, round(self.width * self.sar))
        h = self.height
        return (h, w) if self.rotation_deg in (90, 270) else (w, h)


@dataclass(frozen=True)
class AudioStream:
    index: int
    type_index: int
    codec: str
    channels: int
    sample_rate: int
    start_s: float
    duration_s: float | None


@dataclass(frozen=True)
class MediaInfo:
    path: str
    format_name: str
    format_duration_s: float | None
    video: VideoStream | None
    audio: AudioStream | None
    n_video_streams: int
    n_audio_streams: int

    @property
    def duration_s(self) -> float | None:
        """Length of the chosen video stream on its own timeline (0 = its start)."""
        if self.video is None:
            return None
        if self.video.duration_s:
            return self.video.duration_s
        if self.format_duration_s:
            return max(0.0, self.format_duration_s - self.video.start_s)
        return None

    def facts(self) -> dict[str, Any]:
        """Flat media facts for the sample json and the manifest."""
        v, a = self.video, self.audio
        return {
            "container": self.format_name,
            "video_codec": v.codec if v else None,
            "video_stream": v.index if v else None,
            "width": v.width if v else None,
            "height": v.height if v else None,
            "rotation_deg": v.rotation_deg if v else None,
            "source_fps": v.avg_fps if v else None,
            "video_start_s": v.start_s if v else None,
            "audio_codec": a.codec if a else None,
            "audio_stream": a.index if a else None,
            "audio_channels": a.channels if a else None,
            "audio_rate_hz": a.sample_rate if a else None,
            "audio_start_s": a.start_s if a else None,
            "n_video_streams": self.n_video_streams,
            "n_audio_streams": self.n_audio_streams,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and out not in (float("inf"), float("-inf")) else None


def _ratio(text: str | None) -> float | None:
    try:
        r = Fraction(text) if text else None
    except (ValueError, ZeroDivisionError):
        return None
    return float(r) if r else None


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation in degrees, counter-clockwise as ffprobe reports the display matrix.

    Only whether it is 90 or 270 matters here (width and height swap); the
    decoders (decord and ffmpeg's autorotate) apply the rotation themselves.
    """
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360 // 90 * 90
    tag = (stream.get("tags") or {}).get("rotate")  # legacy tag, clockwise
    return int(round(-float(tag))) % 360 // 90 * 90 if _float(tag) is not None else 0


def _duration(stream: dict[str, Any]) -> float | None:
    d = _float(stream.get("duration"))
    if d:
        return d
    tag = (stream.get("tags") or {}).get("DURATION")  # matroska: "00:00:05.000000000"
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    return None


def _rank(stream: dict[str, Any], size: float) -> tuple:
    disp = stream.get("disposition") or {}
    return (
        -int(bool(disp.get("default"))),
        -size,
        -(_float(stream.get("bit_rate")) or 0.0),
        int(stream["index"]),
    )


def parse(path: str, data: dict[str, Any]) -> MediaInfo:
    """MediaInfo from ffprobe's ``-show_format -show_streams`` JSON."""
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    videos, audios = [], []
    for s in streams:
        kind = s.get("codec_type")
        if kind == "video" and not (s.get("disposition") or {}).get("attached_pic"):
            videos.append(s)
        elif kind == "audio" and int(s.get("channels") or 0) > 0:
            audios.append(s)
    all_v = [s for s in streams if s.get("codec_type") == "video"]
    all_a = [s for s in streams if s.get("codec_type") == "audio"]

    video = None
    if videos:
        s = min(
            videos, key=lambda s: _rank(s, int(s.get("width") or 0) * int(s.get("height") or 0))
        )
        sar = _ratio((s.get("sample_aspect_ratio") or "1:1").replace(":", "/")) or 1.0
        video = VideoStream(
            index=int(s["index"]),
            type_index=all_v.index(s),
            codec=str(s.get("codec_name")),
            width=int(s.get("width") or 0),
            height=int(s.get("height") or 0),
            sar=sar,
            rotation_deg=_rotation(s),
            start_s=_float(s.get("start_time")) or 0.0,
            duration_s=_duration(s),
            avg_fps=_ratio(s.get("avg_frame_rate")) or _ratio(s.get("r_frame_rate")),
        )
    audio = None
    if audios:
        s = min(audios, key=lambda s: _rank(s, int(s.get("channels") or 0)))
        audio = AudioStream(
            index=int(s["index"]),
            type_index=all_a.index(s),
            codec=str(s.get("codec_name")),
            channels=int(s.get("channels") or 0),
            sample_rate=int(s.get("sample_rate") or 0),
            start_s=_float(s.get("start_time")) or 0.0,
            duration_s=_duration(s),
        )
    return MediaInfo(
        path=path,
        format_name=str(fmt.get("format_name")),
        format_duration_s=_float(fmt.get("duration")),
        video=video,
        audio=audio,
        n_video_streams=len(videos),
        n_audio_streams=len(audios),
    )


def probe(path: str, *, timeout_s: float = 60.0) -> MediaInfo:
    """Probe ``path`` with ffprobe (no shell; the path is one argv element)."""
    cmd = [ffprobe_bin(), "-v", "error", "-show_format", "-show_streams", "-of", "json",
           local_url(path)]  # fmt: skip
    try:
        proc = run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise MediaError("timeout") from e
    if proc.returncode != 0:
        raise MediaError(f"decode_error: {last_line(proc.stderr, path) or 'ffprobe failed'}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise MediaError("decode_error: ffprobe returned no JSON") from e
    return parse(path, data)


def last_line(stderr: bytes | str, path: str | None = None) -> str:
    """The most informative line of a tool's stderr, for a manifest reason."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return clean_message(lines[-1], path) if lines else ""
