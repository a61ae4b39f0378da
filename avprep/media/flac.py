"""encode_flac: a mono waveform as a FLAC file in memory, encoded in-process by PyAV."""

from __future__ import annotations

import io

import av
import numpy as np


def encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    """``wave``: ``[n]`` float32 in [-1, 1] -> FLAC bytes, 16-bit mono at ``sample_rate``
    (samples rounded as FFmpeg's float -> s16 conversion rounds them, clipped)."""
    pcm = np.clip(np.rint(np.asarray(wave, np.float64) * 32768), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=sample_rate, layout="mono", format="s16")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()
