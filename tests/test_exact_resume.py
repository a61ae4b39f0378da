"""Exact mid-epoch resume (issue 18): a killed and resumed run trains on the same samples,
in the same order, step by step, as one never interrupted (``cmac_core.data.position``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmac_core.config import preset
from cmac_core.data.loader import train_stream
from cmac_core.data.position import Position, read_keys
from conftest import kill_when, run_cli

ENV = {"OMP_NUM_THREADS": "1"}


def _batches(shards, *, workers: int, n: int, start=None, epoch: int = 0):
    """``n`` batches of a rank-0 loader: ``(keys per batch, Position after each batch)``."""
    cfg = preset("tiny").data
    stream = train_stream(str(shards), cfg, batch_size=2, workers=workers, seed=3, start=start)
    stream.epoch.set(epoch)
    pos = Position(max(1, workers), start)
    keys, states = [], []
    for batch, _ in zip(stream.loader, range(n), strict=False):
        pos.note(batch["reader"])
        keys.append(batch["key"])
        states.append([list(r) for r in pos.readers])
    return keys, states


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_resumed_loader_goes_on_with_the_same_batches(demo_shards, workers):
    keys, states = _batches(demo_shards, workers=workers, n=14)
    again, _ = _batches(demo_shards, workers=workers, n=14)
    assert keys == again  # a pure function of the seed and the layout
    for at in (3, 8):  # mid-epoch (9 batches of 2 per epoch), and past the first epoch
        rest, _ = _batches(demo_shards, workers=workers, n=14 - at, start=states[at - 1])
        assert rest == keys[at:], at


def _args(shards, run: Path, *, workers: int, steps: int = 14) -> list[str]:
    return [str(shards), "--out", str(run), "--config", "tiny", "--batch-size", "2",
            "--steps", str(steps), "--save-every", "2", "--workers", str(workers),
            "--device", "cpu", "--set", "optim.record_keys=true"]  # fmt: skip


def _killed_and_resumed(shards, run: Path, *, workers: int, launch: list[str], at: int = 4):
    """A run killed (SIGKILL, its whole process group) once ``step-{at}.pt`` exists, then
    resumed to its end; its last.pt's data_state."""
    kill_when([*launch, *_args(shards, run, workers=workers)], (run / f"step-{at}.pt").exists,
              env=ENV)  # fmt: skip
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert at <= saved < 14, saved  # killed mid-run, mid-epoch 0 or 1 (9 steps each)
    proc = subprocess.run([*launch, *_args(shards, run, workers=workers), "--resume"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starts anew" not in proc.stderr + proc.stdout
    return saved


PRETRAIN = [sys.executable, "-m", "avprep", "pretrain"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_and_resume_sees_the_same_keys_step_by_step(demo_shards, tmp_path, workers):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_cli("pretrain", *_args(demo_shards, whole, workers=workers), env=ENV)
    _killed_and_resumed(demo_shards, cut, workers=workers, launch=PRETRAIN)
    keys = read_keys(whole)
    assert len(keys) == 14 and all(len(k) == 2 for k in keys)
    assert read_keys(cut) == keys  # across the epoch boundary at step 9
    state = torch.load(cut / "last.pt", weights_only=True)["data_state"]
    assert json.loads(json.dumps(state)) == state  # plain data
