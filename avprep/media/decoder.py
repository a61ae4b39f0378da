"""Which decoder ``avprep shard`` uses, and what each choice falls back to."""

from __future__ import annotations

from enum import Enum


class Decoder(str, Enum):
    """``--decoder``: auto = PyAV, then the ffmpeg-CLI pipe for files PyAV fails on;
    pyav / ffmpeg = that one only; decord = decord, then the ffmpeg pipe for what
    decord cannot open (AV1, stream containers) or fails on."""

    auto = "auto"
    pyav = "pyav"
    decord = "decord"
    ffmpeg = "ffmpeg"

    @property
    def attempts(self) -> tuple[str, ...]:
        """The frame decoders to try in order; the next one runs only after a MediaError."""
        return _ATTEMPTS[self]

    @property
    def needs_ffmpeg(self) -> bool:
        """Whether ffmpeg and ffprobe must be installed: the ffmpeg pipe, and decord (whose
        facts come from ffprobe and audio from ffmpeg). auto uses them only if present."""
        return self in (Decoder.ffmpeg, Decoder.decord)


_ATTEMPTS = {
    Decoder.auto: ("pyav", "ffmpeg"),
    Decoder.pyav: ("pyav",),
    Decoder.decord: ("decord", "ffmpeg"),
    Decoder.ffmpeg: ("ffmpeg",),
}

DECODERS = tuple(d.value for d in Decoder)
