"""scripts/gpu_check runs on CPU as CI runs it, so it cannot rot before a GPU session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check"


@pytest.mark.slow
def test_gpu_check_prints_its_table_on_cpu(tmp_path):
    proc = subprocess.run([str(SCRIPT), "--size", "small", "--device", "cpu", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    for row in ("bf16 vs float32 gradients  ", "host-device syncs per step ", "channels_last off",
                "channels_last on", "cudnn.benchmark off/on", "torchrun pretrain, 2 processes",
                "embed  "):  # fmt: skip
        assert row in table, table
    assert "0 on plain steps, 2 on log/save steps" in table, table
    assert "10 steps in" in table and "ranks said: 0: cpu gloo, 1: cpu gloo" in table, table
    assert (tmp_path / "ddp" / "last.pt").exists() and list(
        (tmp_path / "emb").glob("part-*.parquet")
    )
