"""Synthetic videos made with ffmpeg's lavfi sources (demo and tests; no downloads).

``make_clapper`` makes a "clapper": black frames with white flashes and 1 kHz
beeps at the same known times, optionally with the audio stream starting late,
so synchronization can be checked exactly. ``make_demo_video`` makes a moving
shape with a tone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from avprep.tools import ffmpeg_bin, has_ffmpeg

FLASH_S = 0.1


def _windows(times: Sequence[float], width: float, shift: float = 0.0) -> str:
    return "+".join(f"between(t,{t - shift:.4f},{t - shift + width - 1e-3:.4f})" for t in times)


def _run(args: list[str]) -> None:
    cmd = [ffmpeg_bin(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")


def video_codec_args(path: Path, vcodec: str | None) -> list[str]:
    ext = path.suffix.lower()
    codec = vcodec or {".webm": "libvpx-vp9", ".mkv": "libx264", ".avi": "mpeg4"}.get(
        ext, "libx264"
    )
    args = ["-c:v", codec, "-pix_fmt", "yuv420p"]
    if codec == "libx264":
        args += ["-preset", "veryfast", "-g", "25"]
    elif codec == "libaom-av1":
        args += ["-cpu-used", "8", "-row-mt", "1"]
    elif codec == "libvpx-vp9":
        args += ["-deadline", "realtime", "-cpu-used", "8"]
    return args


def audio_codec_args(path: Path) -> list[str]:
    ext = path.suffix.lower()
    return ["-c:a", {".webm": "libopus", ".mkv": "libopus", ".avi": "mp3"}.get(ext, "aac")]


def make_clapper(
    path: str | Path,
    *,
    duration_s: float = 6.0,
    flashes_s: Sequence[float] = (1.0, 2.5, 4.0),
    audio_delay_s: float = 0.0,
    fps: float = 25,
    size: tuple[int, int] = (160, 120),
    vcodec: str | None = None,
    audio: bool = True,
    vfr: bool = False,
    extra_args: Sequence[str] = (),
) -> Path:
    """White flashes and 1 kHz beeps at ``flashes_s`` on the presentation timeline.

    With ``audio_delay_s`` > 0 the audio stream starts that late (its beeps are
    still at ``flashes_s``). Flashes and beeps last ``FLASH_S`` seconds. With
    ``vfr`` the frame intervals vary (frames are shifted by 0, 12 or 24 ms).
    """
    path = Path(path)
    w, h = size
    jitter = f"settb=1/1000,setpts='(N/{fps}+0.012*mod(N,3))/TB'," if vfr else ""
    video = (
        f"color=c=black:s={w}x{h}:r={fps}:d={duration_s},{jitter}"
        f"drawbox=x=0:y=0:w={w}:h={h}:color=white:t=fill:enable='{_windows(flashes_s, FLASH_S)}'"
    )
    args = ["-f", "lavfi", "-i", video]
    if audio:
        a_dur = duration_s - audio_delay_s
        beeps = _windows(flashes_s, FLASH_S, shift=audio_delay_s)
        tone = (
            f"sine=frequency=1000:sample_rate=48000:duration={a_dur},"
            f"volume=volume=0:enable='not({beeps})'"
        )
        if audio_delay_s:
            args += ["-itsoffset", str(audio_delay_s)]
        args += ["-f", "lavfi", "-i", tone]
    args += video_codec_args(path, vcodec)
    args += audio_codec_args(path) if audio else ["-an"]
    if vfr:
        args += ["-vsync", "vfr"]
    args += [*extra_args, str(path)]
    _run(args)
    return path


def make_demo_video(
    path: str | Path,
    *,
    duration_s: float = 12.0,
    tone_hz: float = 440.0,
    color: str = "orange",
    fps: float = 25,
    size: tuple[int, int] = (320, 240),
    rotate_deg: int = 0,
    audio_delay_s: float = 0.0,
) -> Path:
    """A square bouncing across a gradient; its tone is loud for 0.3 s after each side bounce.

    The square hits a side wall every 3 s (t = 0, 3, 6, ...), so sound and motion
    correspond, as in real footage. Without ffmpeg on PATH the same scene is drawn and
    encoded in-process by PyAV (``avprep.demo_video``; .mp4 and .mkv).
    """
    if not has_ffmpeg():
        from avprep import demo_video  # noqa: PLC0415

        return demo_video.make(path, duration_s=duration_s, tone_hz=tone_hz, color=color,
                               fps=fps, size=size, rotate_deg=rotate_deg,
                               audio_delay_s=audio_delay_s)  # fmt: skip
    path = Path(path)
    w, h = size
    box = max(16, h // 4)
    video = (
        f"gradients=s={w}x{h}:r={fps}:d={duration_s}:speed=0.01[bg];"
        f"color=c={color}:s={box}x{box}:r={fps}:d={duration_s}[fg];"
        f"[bg][fg]overlay=x='(W-w)*abs(mod(t/3,2)-1)':y='(H-h)*abs(mod(t/2,2)-1)':eval=frame"
    )
    a_dur = duration_s - audio_delay_s
    tone = (
        f"sine=frequency={tone_hz}:sample_rate=44100:duration={a_dur},"
        f"volume='0.15+0.85*lt(mod(t+{audio_delay_s},3),0.3)':eval=frame"
    )
    args = ["-f", "lavfi", "-i", video]
    if audio_delay_s:
        args += ["-itsoffset", str(audio_delay_s)]
    args += ["-f", "lavfi", "-i", tone, *video_codec_args(path, None), *audio_codec_args(path)]
    if not rotate_deg:
        _run([*args, str(path)])
        return path
    plain = path.with_name(f".plain-{path.name}")
    _run([*args, str(plain)])
    set_rotation(plain, path, rotate_deg)
    plain.unlink()
    return path


def set_rotation(src: str | Path, dst: str | Path, rotate_deg: int) -> Path:
    """Copy ``src`` to ``dst`` (mp4/mov) with rotation metadata (stream copy, no re-encode).

    ``rotate_deg`` is the legacy ``rotate`` tag: players turn the picture that
    many degrees clockwise for display.
    """
    _run(
        [
            "-i",
            str(src),
            "-map",
            "0",
            "-c",
            "copy",
            "-metadata:s:v:0",
            f"rotate={rotate_deg}",
            str(dst),
        ]
    )
    return Path(dst)
