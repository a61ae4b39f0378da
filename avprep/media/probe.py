"""Media facts from a container PyAV has opened: the same MediaInfo, by the same rule,
as ``avprep.probe`` gets from ffprobe.

Each stream is described in ffprobe's JSON shape and handed to ``avprep.probe.parse``,
so streams are chosen exactly as there (default disposition, pixels or channels, bit
rate, index; attached pictures ignored). Rotation comes from the display matrix that
the decoder attaches to the chosen stream's frames (``VideoFrame.rotation``).
"""

from __future__ import annotations

from typing import Any

import av

from avprep.probe import MediaInfo, parse

AV_TIME_BASE = 1_000_000


def _seconds(value: int | None, time_base) -> float | None:
    """``value`` in ``time_base`` units as seconds, to the microsecond as ffprobe prints it."""
    return round(float(value * time_base), 6) if value is not None and time_base else None


def _fraction(value) -> str | None:
    return f"{value.numerator}/{value.denominator}" if value else None


def _stream(s: av.stream.Stream) -> dict[str, Any]:
    """One stream as ffprobe's ``-show_streams`` JSON describes it (the fields parse reads)."""
    cc = s.codec_context
    flags = s.disposition
    out: dict[str, Any] = {
        "index": s.index,
        "codec_type": s.type,
        "codec_name": cc.codec.canonical_name if cc.codec else None,  # "av1", not "libdav1d"
        "disposition": {
            "default": int(bool(flags & av.stream.Disposition.default)),
            "attached_pic": int(bool(flags & av.stream.Disposition.attached_pic)),
        },
        "bit_rate": cc.bit_rate or None,
        "start_time": _seconds(s.start_time, s.time_base),
        "duration": _seconds(s.duration, s.time_base),
        "tags": dict(s.metadata),
    }
    if s.type == "video":
        sar = s.sample_aspect_ratio or cc.sample_aspect_ratio
        out.update(
            width=cc.width,
            height=cc.height,
            sample_aspect_ratio=_fraction(sar),
            avg_frame_rate=_fraction(s.average_rate),
            r_frame_rate=_fraction(s.base_rate),
        )
    elif s.type == "audio":
        out.update(channels=cc.channels, sample_rate=cc.sample_rate)
    return out


def media_info(path: str, container: av.container.InputContainer, *,
               rotation: float | None = None) -> MediaInfo:  # fmt: skip
    """MediaInfo of an opened container; ``rotation``: the chosen video stream's display
    rotation in degrees counter-clockwise (its first frame's ``rotation``), if known."""
    streams = [_stream(s) for s in container.streams]
    info = parse(path, {"streams": streams, "format": {}})
    if info.video is not None and rotation:
        for s in streams:
            if s["index"] == info.video.index:
                s["side_data_list"] = [{"rotation": rotation}]
    duration = round(container.duration / AV_TIME_BASE, 6) if container.duration else None
    return parse(path, {"streams": streams,
                        "format": {"format_name": container.format.name, "duration": duration}})  # fmt: skip
