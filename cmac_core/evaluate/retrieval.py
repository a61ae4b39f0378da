"""Cross-modal retrieval: for each clip's video embedding, is its own audio the nearest
of the N candidates' (cosine similarity)? R@1 = the share where it is; chance 1 / N."""

from __future__ import annotations

import numpy as np


def recall_at_1(video: np.ndarray, audio: np.ndarray) -> float:
    """``video [N, D]``, ``audio [N, D]`` (row i of each from clip i) -> R@1 video -> audio.
    A tie counts as a miss unless the clip's own audio is the first of the tied."""
    v, a = np.asarray(video, np.float64), np.asarray(audio, np.float64)
    if v.shape != a.shape or v.ndim != 2 or not len(v):
        raise ValueError(f"need two [N, D] arrays of one shape, got {v.shape} and {a.shape}")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nearest = np.argmax(v @ a.T, axis=1)
    return float(np.mean(nearest == np.arange(len(v))))
