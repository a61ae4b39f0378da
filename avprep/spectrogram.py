"""Log-mel spectrogram presets (numpy; torchaudio's MelSpectrogram is the reference).

Columns are not centred: column j covers samples ``[j * hop, j * hop + win)``
of the waveform it is given, so with ``spec_start_s`` the time of sample 0,
column j covers ``[spec_start_s + j * hop_s, spec_start_s + j * hop_s + win_s)``.

Presets:
- ``logmel128``: 128 mel bins, 25 ms Hann window, 10 ms hop, FFT size =
  window, power spectrum, ``log(mel + 1e-6)`` (the AST / Kaldi-fbank convention).
- ``vggish64``: 64 mel bins (HTK scale) over 125-7500 Hz, 25 ms window, 10 ms
  hop, magnitude spectrum, ``log(mel + 0.01)`` (VGGish's front end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SpecPreset:
    name: str
    n_mels: int
    win_s: float
    hop_s: float
    f_min_hz: float
    f_max_hz: float | None
    power: float
    log_offset: float
    mel_scale: str

    def to_json(self) -> dict:
        """The sample json's ``spec``: enough to interpret the array without this code."""
        return {
            "preset": self.name,
            "n_mels": self.n_mels,
            "hop_s": self.hop_s,
            "win_s": self.win_s,
            "f_min_hz": self.f_min_hz,
            "f_max_hz": self.f_max_hz,
            "power": self.power,
            "log_offset": self.log_offset,
            "mel_scale": self.mel_scale,
        }

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "logmel128": SpecPreset("logmel128", 128, 0.025, 0.010, 0.0, None, 2.0, 1e-6, "slaney"),
    "vggish64": SpecPreset("vggish64", 64, 0.025, 0.010, 125.0, 7500.0, 1.0, 0.01, "htk"),
}


def _hz_to_mel(f, scale: str) -> np.ndarray:
    f = np.asarray(f, np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    lin = 3.0 * f / 200.0  # slaney: linear below 1 kHz, logarithmic above
    return np.where(
        f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0), lin
    )


def _mel_to_hz(m, scale: str) -> np.ndarray:
    m = np.asarray(m, np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), 200.0 * m / 3.0)


def mel_filterbank(preset: SpecPreset, sample_rate: int, n_freqs: int) -> np.ndarray:
    """``[n_mels, n_freqs]`` triangular filters, as ``torchaudio.functional.melscale_fbanks``."""
    f_max = preset.f_max_hz or sample_rate / 2
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel(preset.f_min_hz, preset.mel_scale), _hz_to_mel(f_max, preset.mel_scale),
                        preset.n_mels + 2)  # fmt: skip
    f_pts = _mel_to_hz(m_pts, preset.mel_scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]
    fb = np.maximum(0.0, np.minimum(-slopes[:, :-2] / f_diff[:-1], slopes[:, 2:] / f_diff[1:]))
    if preset.mel_scale == "slaney":  # slaney-normalised areas, as torchaudio's norm="slaney"
        fb *= 2.0 / (f_pts[2 : preset.n_mels + 2] - f_pts[: preset.n_mels])
    return fb.T.astype(np.float32)


def unusable(preset: SpecPreset, sample_rate: int) -> str | None:
    """Why ``preset`` cannot be computed at ``sample_rate`` (None when it can): a band
    above the Nyquist frequency, or mel bands that no FFT bin reaches (constant rows)."""
    if preset.f_max_hz and preset.f_max_hz > sample_rate / 2:
        return (
            f"its bands reach {preset.f_max_hz:g} Hz, above {sample_rate / 2:g} Hz (half the rate)"
        )
    n_fft = round(preset.win_s * sample_rate)
    empty = int((mel_filterbank(preset, sample_rate, n_fft // 2 + 1).max(axis=1) == 0).sum())
    if empty:
        return f"{empty} of its {preset.n_mels} mel bands would be empty (too few FFT bins)"
    return None


class LogMel:
    """Waveform ``[n_samples]`` float32 -> log-mel ``[n_mels, n_columns]`` float16.

    Computed with numpy (periodic Hann window, real FFT, the filterbank above):
    shard workers then never import torch, which costs 2 s and ~480 MB per
    worker. It equals ``torchaudio.transforms.MelSpectrogram`` with this
    preset (the reference; ``reference()`` builds it and the tests compare them)
    to within float16 rounding. Wants a single-threaded BLAS in workers
    (``OPENBLAS_NUM_THREADS=1``; the pipeline sets it): OpenBLAS threads made
    the small matrix product 30x slower.
    """

    def __init__(self, preset: str, sample_rate: int) -> None:
        self.preset = PRESETS[preset]
        self.sample_rate = sample_rate
        p = self.preset
        self.win = round(p.win_s * sample_rate)
        self.hop = round(p.hop_s * sample_rate)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.win) / self.win)).astype(
            np.float32
        )
        self.fb = mel_filterbank(p, sample_rate, self.win // 2 + 1)

    def n_columns(self, n_samples: int) -> int:
        return 0 if n_samples < self.win else 1 + (n_samples - self.win) // self.hop

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        n = self.n_columns(len(wave))
        if n == 0:
            return np.zeros((self.preset.n_mels, 0), np.float16)
        frames = np.lib.stride_tricks.sliding_window_view(np.asarray(wave, np.float32), self.win)[
            :: self.hop
        ][:n]
        spec = (
            np.abs(np.fft.rfft(frames * self.window, axis=1)).astype(np.float32)
            ** self.preset.power
        )
        return np.log(self.fb @ spec.T + self.preset.log_offset).astype(np.float16)

    def reference(self):
        """The same transform in torchaudio: ``MelSpectrogram`` (then ``log(x + offset)``)."""
        import torchaudio  # noqa: PLC0415

        p = self.preset
        return torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate,
            n_fft=self.win,  # = window: column j covers exactly [j*hop, j*hop + win)
            win_length=self.win,
            hop_length=self.hop,
            f_min=p.f_min_hz,
            f_max=p.f_max_hz,
            n_mels=p.n_mels,
            power=p.power,
            center=False,
            norm="slaney" if p.mel_scale == "slaney" else None,
            mel_scale=p.mel_scale,
        )
