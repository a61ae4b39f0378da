"""Log-mel spectrogram presets (torchaudio).

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


class LogMel:
    """Waveform ``[n_samples]`` float32 -> log-mel ``[n_mels, n_columns]`` float16."""

    def __init__(self, preset: str, sample_rate: int) -> None:
        import torch  # noqa: PLC0415  (only workers pay for the import)
        import torchaudio  # noqa: PLC0415

        self.preset = PRESETS[preset]
        p = self.preset
        self.win = round(p.win_s * sample_rate)
        self.hop = round(p.hop_s * sample_rate)
        self._torch = torch
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
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

    def n_columns(self, n_samples: int) -> int:
        return 0 if n_samples < self.win else 1 + (n_samples - self.win) // self.hop

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        if len(wave) < self.win:
            return np.zeros((self.preset.n_mels, 0), np.float16)
        with self._torch.no_grad():
            mel = self.mel(self._torch.from_numpy(np.ascontiguousarray(wave, np.float32)))
            out = self._torch.log(mel + self.preset.log_offset)
        return out.numpy().astype(np.float16)
