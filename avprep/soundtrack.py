"""The sound of the synthetic benchmark: the sounding object's class is its pitch and
timbre, its bounces are the rhythm.

A class plays a tone of its own fundamental (``PITCH_HZ``) with one of three
harmonic recipes (``TIMBRES``), so two classes differ in pitch and most also in
timbre. The tone hums quietly all the time (``HUM``) and strikes at every onset:
a 5 ms attack, then an exponential decay (``DECAY_S``). In a silent stretch
nothing sounds. Noise is white, of RMS ``noise * PEAK``.
"""

from __future__ import annotations

import numpy as np

PITCH_HZ = (220.0, 330.0, 440.0, 554.37, 659.26, 880.0, 1108.73, 1318.51)  # one per class
TIMBRES = (  # relative amplitudes of harmonics 1, 2, 3, ...
    (1.0, 0.08),  # nearly pure
    (1.0, 0.0, 0.4, 0.0, 0.2),  # odd harmonics (clarinet-like)
    (1.0, 0.5, 0.33, 0.25, 0.2),  # all harmonics (saw-like)
)
HUM = 0.12  # level between strikes, of a strike's peak
ATTACK_S = 0.005
DECAY_S = 0.12
PEAK = 0.5  # a strike's amplitude, of full scale
FADE_S = 0.01  # edges of silent stretches
HEARD_S = 0.03  # a strike is heard (and struck at all) only with this long before a silence


def heard(bounces_s: list[float], silences_s: list[list[float]]) -> list[float]:
    """The bounces that strike: none in a silent stretch or in the ``HEARD_S`` before one."""
    return [t for t in bounces_s if not any(a - HEARD_S <= t < b for a, b in silences_s)]


def tone(class_index: int, t: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """The class's waveform at times ``t`` (seconds), peak-normalized to 1; harmonics at or
    above 0.45 of the sample rate are left out."""
    f0 = PITCH_HZ[class_index]
    recipe = TIMBRES[class_index % len(TIMBRES)]
    wave = np.zeros_like(t)
    for h, amp in enumerate(recipe, 1):
        if amp and h * f0 < 0.45 * sample_rate_hz:
            wave += amp * np.sin(2 * np.pi * h * f0 * t + 0.7 * h)
    return wave / np.max(np.abs(wave))


def envelope(onsets_s: list[float], t: np.ndarray) -> np.ndarray:
    """The loudness over time: ``HUM`` plus a strike (5 ms attack, decay) at every onset."""
    env = np.full_like(t, HUM)
    for onset in onsets_s:
        dt = t - onset
        on = dt >= 0
        env[on] += np.minimum(dt[on] / ATTACK_S, 1.0) * np.exp(-dt[on] / DECAY_S)
    return env


def gate(silences_s: list[list[float]], t: np.ndarray) -> np.ndarray:
    """1 where sound may be heard, 0 inside the silent stretches, with ``FADE_S`` ramps."""
    g = np.ones_like(t)
    for start, end in silences_s:
        ramp = np.minimum(
            np.clip((start - t) / FADE_S, 0, 1) + np.clip((t - end) / FADE_S, 0, 1), 1
        )
        g = np.minimum(g, ramp)
    return g


def soundtrack(
    rng: np.random.Generator,
    class_index: int,
    *,
    onsets_s: list[float],
    silences_s: list[list[float]],
    duration_s: float,
    sample_rate_hz: int,
    noise: float,
) -> np.ndarray:
    """Mono float32 samples in [-1, 1] for ``duration_s`` seconds: the class's tone struck
    at ``onsets_s``, silent in ``silences_s``, plus white noise of RMS ``noise * PEAK``."""
    t = np.arange(round(duration_s * sample_rate_hz)) / sample_rate_hz
    env = envelope(onsets_s, t) * gate(silences_s, t)
    wave = PEAK / (1.0 + HUM) * env * tone(class_index, t, sample_rate_hz)
    if noise > 0:
        wave += rng.normal(0.0, noise * PEAK, t.shape)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)
