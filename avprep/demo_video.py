"""The demo's synthetic video made in-process with PyAV, for machines without ffmpeg.

``synth.make_demo_video`` draws its videos with ffmpeg's lavfi sources; where no
ffmpeg is installed it calls ``make`` here, which draws the same scene with numpy and
encodes it with the codecs PyAV bundles: a square bouncing over a moving gradient, its
tone loud for 0.3 s after each side bounce (t = 0, 3, 6, ...), H.264 with AAC (MP4) or
Opus (Matroska). The audio may start late (``audio_delay_s``: its first timestamp
there), and an MP4 may carry a rotation for display (``rotate_deg``: written into the
video track's header matrix, as ffmpeg's legacy ``rotate`` tag is, since the muxer no
longer takes that tag).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

COLORS = {"orange": (255, 165, 0), "blue": (0, 0, 255), "red": (255, 0, 0),
          "yellow": (255, 255, 0), "green": (0, 128, 0), "white": (255, 255, 255)}  # fmt: skip
AUDIO_RATE = {".mkv": 48000}  # Opus's rate; AAC: 44.1 kHz, as ffmpeg's sine


def _frame(w: int, h: int, box: int, rgb: tuple[int, int, int], t: float) -> np.ndarray:
    """``[h, w, 3]`` uint8: a gradient drifting with time, the square at its place at ``t``."""
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    phase = 0.05 * t
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 128 + 100 * np.sin(2 * np.pi * (x + phase))
    img[..., 1] = 128 + 100 * np.sin(2 * np.pi * (y + phase + 0.33))
    img[..., 2] = 128 + 100 * np.sin(2 * np.pi * (x + y + phase + 0.66)) / 2
    left = round((w - box) * abs((t / 3) % 2 - 1))
    top = round((h - box) * abs((t / 2) % 2 - 1))
    img[top : top + box, left : left + box] = rgb
    return img.astype(np.uint8)


def _tone(n: int, rate: int, start_s: float, tone_hz: float, delay_s: float) -> np.ndarray:
    """Samples ``[n]`` float32 from ``start_s`` of the audio stream (its own time 0)."""
    t = start_s + np.arange(n, dtype=np.float64) / rate
    volume = 0.15 + 0.85 * (np.mod(t + delay_s, 3.0) < 0.3)
    return (volume * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)


def make(path: str | Path, *, duration_s: float, tone_hz: float, color: str, fps: float,
         size: tuple[int, int], rotate_deg: int, audio_delay_s: float) -> Path:  # fmt: skip
    """The video ``synth.make_demo_video`` describes (and gives every argument of, with its
    defaults), written to ``path`` (.mp4 or .mkv)."""
    import av  # noqa: PLC0415

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".mp4", ".mkv"):
        raise ValueError(f"the PyAV demo video writes .mp4 or .mkv, not {ext or 'no suffix'}")
    if rotate_deg and ext != ".mp4":
        raise ValueError("a rotation is written into MP4 files only")
    w, h = size
    box = max(16, h // 4)
    rate = AUDIO_RATE.get(ext, 44100)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=round(fps))
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.codec_context.gop_size = 25
        video.codec_context.options = {"preset": "veryfast"}
        audio = out.add_stream("libopus" if ext == ".mkv" else "aac", rate=rate)
        audio.layout = "mono"
        rgb = COLORS.get(color, (255, 255, 255))
        for i in range(round(duration_s * fps)):
            frame = av.VideoFrame.from_ndarray(_frame(w, h, box, rgb, i / fps), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        step = audio.codec_context.frame_size or 1024
        total = round((duration_s - audio_delay_s) * rate)
        first = round(audio_delay_s * rate)  # late audio: its first timestamp, not silence
        for start in range(0, total, step):
            n = min(step, total - start)
            samples = _tone(n, rate, start / rate, tone_hz, audio_delay_s)
            frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, first + start
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    if rotate_deg:
        set_mp4_rotation(path, rotate_deg)
    return path


def set_mp4_rotation(path: Path, rotate_deg: int) -> None:
    """Write a display rotation (degrees clockwise, as the legacy ``rotate`` tag) into the
    header matrix of an MP4's video track (the track whose header has a size), in place."""
    if rotate_deg % 90:
        raise ValueError(f"rotate_deg must be a multiple of 90, got {rotate_deg}")
    data = bytearray(path.read_bytes())
    turns = (rotate_deg // 90) % 4
    cos, sin = ((1, 0), (0, 1), (-1, 0), (0, -1))[turns]
    one = 1 << 16
    matrix = (cos * one, -sin * one, 0, sin * one, cos * one, 0, 0, 0, 1 << 30)
    at = 0
    while (at := data.find(b"tkhd", at + 1)) > 0:
        version = data[at + 4]
        m = at + 8 + (20 if version == 0 else 32) + 16  # past times, ids, layer, volume
        width, height = struct.unpack(">II", data[m + 36 : m + 44])
        if width and height:
            data[m : m + 36] = struct.pack(">9i", *matrix)
            path.write_bytes(bytes(data))
            return
    raise ValueError(f"{path}: no video track header to rotate")
