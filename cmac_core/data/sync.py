"""Synchronization pairs: a clip's aligned audio window and the same segment's audio shifted.

The negative of the synchronization pretext (``--method lla``) is the clip's own audio
moved by ``d`` seconds, ``min_shift_s <= |d|`` (``<= max_shift_s`` when that is > 0).
Both windows lie wholly inside the stored spectrogram: a padded window would tell the
label by its padding. So the clip is drawn only among those whose aligned window is
inside and leaves room for a shift, and the shift only among the columns that keep the
shifted window inside; a segment with no such clip raises SampleError (recorded as damage
and skipped, as any unusable sample is).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from avprep.schema import SampleError
from cmac_core.data.clip import Window, choose_window


@dataclasses.dataclass(frozen=True)
class SyncPair:
    aligned: Window  # the clip's frames and the columns of the same seconds
    shifted: Window  # the same frames; columns moved by shift_columns
    shift_s: float  # shift_columns * hop_s (signed: > 0 = later audio)


def shift_range(hop_s: float, min_shift_s: float, max_shift_s: float) -> tuple[int, int | None]:
    """Column shifts allowed: ``(least, most)``, ``most`` None = unbounded."""
    least = max(1, math.ceil(min_shift_s / hop_s - 1e-9))
    most = None if max_shift_s <= 0 else math.floor(max_shift_s / hop_s + 1e-9)
    return least, most


def _shifts(first: int, n_cols: int, total: int, least: int, most: int | None) -> np.ndarray:
    """Column offsets ``k`` with ``least <= |k| (<= most)`` keeping ``[first + k, + n_cols)``
    inside ``[0, total)``."""
    lo, hi = -first, total - n_cols - first  # first + k in [0, total - n_cols]
    if most is not None:
        lo, hi = max(lo, -most), min(hi, most)
    ks = np.arange(lo, hi + 1)
    return ks[np.abs(ks) >= least]


def sync_pair(
    meta: dict,
    total_columns: int,
    clip_frames: int,
    rng: np.random.Generator,
    *,
    min_shift_s: float,
    max_shift_s: float = 0.0,
    audio_seconds: float = 0.0,
    key: str = "?",
) -> SyncPair:
    """A random clip of the segment (``meta``: its json; ``total_columns``: its spectrogram's
    columns) with an aligned and a shifted audio window, both inside the spectrogram."""
    hop = float(meta["spec"]["hop_s"])
    least, most = shift_range(hop, min_shift_s, max_shift_s)
    n_frames = len(meta["frame_times"])
    usable = []
    for i in range(max(1, n_frames - clip_frames + 1)):
        w = choose_window(meta, clip_frames, None, first_frame=i, audio_seconds=audio_seconds)
        inside = w.first_column >= 0 and w.first_column + w.n_columns <= total_columns
        if inside and len(_shifts(w.first_column, w.n_columns, total_columns, least, most)):
            usable.append(w)
    if not usable:
        audio_s = audio_seconds or clip_frames / float(meta["fps"])
        raise SampleError(
            f"sample {key}: {total_columns * hop:.2f} s of audio has no room "
            f"for a {audio_s:.2f} s window and its copy shifted by >= {least * hop:.2f} s "
            "(data.sync_shift_min_s)"
        )
    aligned = usable[int(rng.integers(len(usable)))]
    ks = _shifts(aligned.first_column, aligned.n_columns, total_columns, least, most)
    k = int(ks[int(rng.integers(len(ks)))])
    shifted = dataclasses.replace(aligned, first_column=aligned.first_column + k)
    return SyncPair(aligned, shifted, k * hop)
