"""Property tests: a clip window's frames and spectrogram columns cover the same seconds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cmac_core.data.clip import choose_window, cut_columns, frame_indices


@st.composite
def segments(draw):
    fps = draw(st.sampled_from([8.0, 10.0, 16.0, 25.0, 30.0]))
    hop = draw(st.sampled_from([0.01, 0.02]))
    win = 2.5 * hop
    start = draw(st.floats(0, 600)).__round__(3)
    n_frames = draw(st.integers(8, 200))
    # Frame times: each near its grid time (VFR sources jitter by up to half a period).
    jitter = draw(st.lists(st.floats(-0.45, 0.0), min_size=n_frames, max_size=n_frames))
    times = [start + (i + j) / fps for i, j in enumerate(jitter)]
    times = list(np.maximum.accumulate(np.maximum(times, start)))
    duration = n_frames / fps
    n_cols = int((duration - win) / hop) + 1
    meta = {"frame_times": times, "fps": fps, "start_s": start, "end_s": start + duration,
            "spec_start_s": start, "spec": {"hop_s": hop, "win_s": win}}  # fmt: skip
    return meta, n_cols


@settings(max_examples=300, deadline=None)
@given(segments(), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_window_frames_and_columns_cover_the_same_seconds(seg, clip_frames, seed):
    meta, n_cols = seg
    w = choose_window(meta, clip_frames, np.random.default_rng(seed))
    hop, fps = meta["spec"]["hop_s"], meta["fps"]
    idx = frame_indices(w, len(meta["frame_times"]))
    assert len(idx) == clip_frames
    assert idx == sorted(idx) and idx[0] >= 0 and idx[-1] < len(meta["frame_times"])
    # audio starts where the first frame is shown (within half a hop) ...
    col_start = meta["spec_start_s"] + w.first_column * hop
    assert abs(col_start - meta["frame_times"][idx[0]]) <= hop / 2 + 1e-9
    # ... and lasts as long as the frames do (within half a hop)
    assert abs(w.n_columns * hop - clip_frames / fps) <= hop / 2 + 1e-9
    # the same number of columns for every window: batches stack
    assert w.n_columns == round(clip_frames / fps / hop)
    spec = np.random.default_rng(seed).normal(size=(8, n_cols)).astype(np.float16)
    cut = cut_columns(spec, w)
    assert cut.shape == (8, w.n_columns)
    lo = max(0, w.first_column)
    hi = min(n_cols, w.first_column + w.n_columns)
    if hi > lo:
        np.testing.assert_array_equal(
            cut[:, lo - w.first_column : hi - w.first_column], spec[:, lo:hi]
        )


@settings(max_examples=100, deadline=None)
@given(segments(), st.integers(1, 16), st.floats(0.01, 0.5), st.integers(0, 2**31 - 1))
def test_audio_offset_augmentation_is_bounded(seg, clip_frames, max_offset, seed):
    meta, _ = seg
    w = choose_window(meta, clip_frames, np.random.default_rng(seed), audio_offset_max_s=max_offset)
    hop = meta["spec"]["hop_s"]
    shown = meta["frame_times"][w.first_frame]
    col_start = meta["spec_start_s"] + w.first_column * hop
    assert abs(col_start - shown) <= max_offset + hop / 2 + 1e-9


@settings(max_examples=300, deadline=None)
@given(segments(), st.integers(1, 16), st.floats(0.05, 4.0), st.integers(0, 2**31 - 1))
def test_longer_audio_window_is_centred_on_the_clip(seg, clip_frames, audio_s, seed):
    meta, n_cols = seg
    w = choose_window(meta, clip_frames, np.random.default_rng(seed), audio_seconds=audio_s)
    hop, fps = meta["spec"]["hop_s"], meta["fps"]
    # as many columns as the seconds asked (within half a hop), the same for every window
    assert w.n_columns == max(1, round(audio_s / hop))
    # centred on the video clip [t0, t0 + clip_frames / fps) within a hop
    t0 = meta["frame_times"][w.first_frame]
    audio_centre = meta["spec_start_s"] + (w.first_column + w.n_columns / 2) * hop
    assert abs(audio_centre - (t0 + clip_frames / fps / 2)) <= hop + 1e-9
    # never read outside the stored columns: what lies outside is padded with the minimum
    spec = np.random.default_rng(seed).normal(size=(4, n_cols)).astype(np.float16)
    cut = cut_columns(spec, w)
    assert cut.shape == (4, w.n_columns)
    for j in range(w.n_columns):
        col = w.first_column + j
        expected = spec[:, col] if 0 <= col < n_cols else np.full(4, spec.min(), np.float16)
        np.testing.assert_array_equal(cut[:, j], expected)


@settings(max_examples=100, deadline=None)
@given(segments(), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_audio_seconds_zero_is_the_clips_own_span(seg, clip_frames, seed):
    meta, _ = seg
    old = choose_window(meta, clip_frames, np.random.default_rng(seed))
    same = choose_window(meta, clip_frames, np.random.default_rng(seed), audio_seconds=0.0)
    assert (old.first_column, old.n_columns) == (same.first_column, same.n_columns)
    assert same.audio_s == same.clip_s
