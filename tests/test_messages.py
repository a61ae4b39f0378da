"""Library errors speak the library's words; the command line prints its own (flags)."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from cmac_core.config import ConfigError, preset
from cmac_core.config_files import load
from cmac_core.distributed import DeviceError, wants_cuda
from cmac_core.evaluate.config import EvaluateConfig
from cmac_core.train import TrainingError, pretrain


def _no_flags(e: BaseException) -> None:
    assert "--" not in str(e), str(e)
    assert e.cli and "--" in e.cli, e.cli


def test_library_messages_name_parameters_and_the_cli_wording_names_flags(tmp_path):
    with pytest.raises(ConfigError) as e:
        EvaluateConfig(out_dir=str(tmp_path), crop_px=100)
    _no_flags(e.value)
    assert "crop_px must be a multiple of 16" in str(e.value) and "--crop-px" in e.value.cli
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "nope.txt"))
    _no_flags(e.value)
    with pytest.raises(DeviceError) as e:
        wants_cuda("gpu")
    _no_flags(e.value)


def test_a_run_folder_with_a_run_says_resume_in_each_words(demo_shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({}, run / "last.pt")
    cfg = preset("tiny").replace("optim", steps=1, workers=0, batch_size=2)
    with pytest.raises(TrainingError) as e:
        pretrain(str(demo_shards), run, cfg, device="cpu")
    _no_flags(e.value)
    assert "resume=True" in str(e.value) and "another run_dir" in str(e.value)
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "1",
                   "--device", "cpu", check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("add --resume, or use another --out")
