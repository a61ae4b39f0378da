"""The numpy log-mel equals torchaudio's MelSpectrogram (the reference) for every preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avprep.spectrogram import PRESETS, LogMel


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("sample_rate", [16000, 22050])
def test_numpy_logmel_matches_torchaudio(preset, sample_rate):
    rng = np.random.default_rng(0)
    t = np.arange(3 * sample_rate) / sample_rate
    wave = (0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(
        np.float32
    )
    wave[: sample_rate // 2] = 0.0  # silence too: the log offset decides there
    logmel = LogMel(preset, sample_rate)
    ours = logmel(wave).astype(np.float32)
    with torch.no_grad():
        ref = torch.log(
            logmel.reference()(torch.from_numpy(wave)) + PRESETS[preset].log_offset
        ).numpy()
    assert ours.shape == ref.shape == (PRESETS[preset].n_mels, logmel.n_columns(len(wave)))
    # float16 storage: within a few float16 steps of the float32 reference
    np.testing.assert_allclose(ours, ref, atol=0.02, rtol=2e-3)


def test_short_waves_give_no_columns():
    logmel = LogMel("logmel128", 16000)
    assert logmel(np.zeros(100, np.float32)).shape == (128, 0)


def test_shard_workers_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, avprep.worker, avprep.sample, avprep.spectrogram; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
