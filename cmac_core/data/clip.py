"""Clip windows: ``clip_frames`` frames and exactly the spectrogram columns of the same seconds.

Times come from the sample json (either schema version): frame i was shown at
``frame_times[i]``; spectrogram column j covers ``[spec_start_s + j*hop_s,
+win_s)``. A clip starting at frame i0 covers ``[t0, t0 + clip_frames / fps)``
with ``t0 = frame_times[i0]``; its audio is the ``n_columns = round(clip_s /
hop_s)`` columns starting at the column nearest t0.

With ``audio_seconds`` > 0 the audio window is that long instead, centred on the
video clip: ``round(audio_seconds / hop_s)`` columns starting at the column nearest
``t0 + clip_s / 2 - audio_seconds / 2`` (so its centre is within a hop of the
clip's). Columns outside the stored spectrogram (a window near a segment's edge,
longer than the segment) are padded by ``cut_columns``'s rule, never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    first_frame: int
    n_frames: int
    first_column: int  # may be < 0 or run past the end: those columns are padded
    n_columns: int
    start_s: float
    clip_s: float
    audio_s: float = 0.0  # the audio window's nominal length (n_columns * hop_s rounds it)


def n_columns_for(clip_frames: int, fps: float, hop_s: float, audio_seconds: float = 0.0) -> int:
    """Columns of a clip's audio: ``audio_seconds`` of them, or (0) the clip's span."""
    return max(1, round((audio_seconds or clip_frames / fps) / hop_s))


def choose_window(
    meta: dict,
    clip_frames: int,
    rng: np.random.Generator | None,
    *,
    audio_offset_max_s: float = 0.0,
    first_frame: int | None = None,
    audio_seconds: float = 0.0,
) -> Window:
    """A window at a random offset (``rng``) or at ``first_frame`` (evaluation); its audio
    ``audio_seconds`` long centred on the clip (0: the clip's own seconds)."""
    times = meta["frame_times"]
    n = len(times)
    if first_frame is None:
        first_frame = int(rng.integers(0, max(1, n - clip_frames + 1))) if rng is not None else 0
    first_frame = min(max(0, first_frame), max(0, n - clip_frames))
    fps, hop = float(meta["fps"]), float(meta["spec"]["hop_s"])
    t0 = float(times[first_frame])
    clip_s = clip_frames / fps
    shift = 0.0
    if audio_offset_max_s > 0 and rng is not None:
        shift = float(rng.uniform(-audio_offset_max_s, audio_offset_max_s))
    audio_s = audio_seconds or clip_s
    a0 = t0 if not audio_seconds else t0 + clip_s / 2 - audio_s / 2
    first_col = round((a0 + shift - float(meta["spec_start_s"])) / hop)
    n_cols = n_columns_for(clip_frames, fps, hop, audio_seconds)
    return Window(first_frame, clip_frames, first_col, n_cols, t0, clip_s, audio_s)


def frame_indices(window: Window, n_available: int) -> list[int]:
    """The window's frame indices, repeating the last frame if the segment is short."""
    return [min(window.first_frame + i, n_available - 1) for i in range(window.n_frames)]


def cut_columns(spec: np.ndarray, window: Window, pad: float | None = None) -> np.ndarray:
    """``spec[:, first:first+n]`` padded where out of range with ``pad`` (a v2 sample's
    ``spec_min``) or, None, the spectrogram's minimum. Only ``spec[:, lo:hi]`` of the
    window's own columns is asked for (``spec`` may read them from a file: ``data.ranges``)."""
    n_mels, total = spec.shape
    lo, hi = max(0, window.first_column), min(total, window.first_column + window.n_columns)
    if lo == window.first_column and hi - lo == window.n_columns:
        # in range: no padding (and no pass over spec for its min)
        return np.array(spec[:, lo:hi], order="C")
    if pad is None:
        pad = spec.min() if spec.size else 0
    out = np.full((n_mels, window.n_columns), pad, dtype=spec.dtype)
    if hi > lo:
        out[:, lo - window.first_column : hi - window.first_column] = spec[:, lo:hi]
    return out
