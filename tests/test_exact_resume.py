"""Exact mid-epoch resume (issue 18): a killed and resumed run trains on the same samples,
in the same order, step by step, as one never interrupted (``cmac_core.data.position``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from cmac_core.config import preset
from cmac_core.data.loader import train_stream
from cmac_core.data.position import DataState, Position, read_keys, resume_point, shards_digest

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


def test_a_layout_change_or_a_damaged_position_resumes_with_one_line():
    layout = DataState(2, 1, 0, 0, shards_digest(["a.tar", "b.tar"]))
    layout.readers = [[[10, 5]], [[8, 5]]]
    saved = layout.to_dict()
    assert resume_point(saved, layout, rank=1, step=10, per_epoch=4) == (0, [[8, 5]], None)
    assert resume_point(None, layout, rank=0, step=0, per_epoch=4) == (0, [], None)
    one = DataState(1, 1, 0, 0, layout.shards)
    epoch, start, note = resume_point(saved, one, rank=0, step=10, per_epoch=9)
    assert (epoch, start) == (1, []) and "world size 2 -> 1" in note
    two = DataState(2, 2, 0, 0, layout.shards)
    _, _, note = resume_point(saved, two, rank=0, step=10, per_epoch=9)
    assert "loader workers 1 -> 2" in note
    for bad in ({**saved, "readers": [[["x", 1]]]}, {**saved, "epoch": -1}, {"version": 1}):
        epoch, start, note = resume_point(bad, layout, rank=0, step=10, per_epoch=4)
        assert (epoch, start) == (2, []) and "not readable" in note
    _, _, note = resume_point(None, layout, rank=0, step=10, per_epoch=4)
    assert "no data position" in note


def _args(shards, run: Path, *, workers: int, steps: int = 14, save_every: int = 2) -> list[str]:
    return [str(shards), "--out", str(run), "--config", "tiny", "--batch-size", "2",
            "--steps", str(steps), "--save-every", str(save_every), "--workers", str(workers),
            "--device", "cpu", "--record-keys"]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(stat.parent.name)
            )
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_9_tree_when(args: list[str], ready, timeout: float = 300) -> None:
    """``kill_when`` for torchrun, whose ranks leave its process group: SIGKILL the run and
    every process under it (ranks, loader workers) once ``ready()`` holds."""
    proc = subprocess.Popen(args, env={**os.environ, **ENV}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _killed_and_resumed(shards, run: Path, *, workers: int, launch: list[str], at: int = 4,
                        save_every: int = 2, resume_with: list[str] | None = None) -> str:  # fmt: skip
    """A run killed (SIGKILL, every process of it) once ``step-{at}.pt`` exists, then
    resumed to its end (under ``resume_with``, else ``launch``); the resumed run's output."""
    _kill_9_tree_when([*launch, *_args(shards, run, workers=workers, save_every=save_every)],
                      (run / f"step-{at}.pt").exists)  # fmt: skip
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert at <= saved < 14, saved  # killed mid-run
    args = _args(shards, run, workers=workers, save_every=save_every)
    proc = subprocess.run([*(resume_with or launch), *args, "--resume"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **ENV})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr + proc.stdout


PRETRAIN = [sys.executable, "-m", "avprep", "pretrain"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_and_resume_sees_the_same_keys_step_by_step(demo_shards, tmp_path, workers):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_cli("pretrain", *_args(demo_shards, whole, workers=workers), env=ENV)
    said = _killed_and_resumed(demo_shards, cut, workers=workers, launch=PRETRAIN)
    assert "starts anew" not in said
    keys = read_keys(whole)
    assert len(keys) == 14 and all(len(k) == 2 for k in keys)
    assert read_keys(cut) == keys  # across the epoch boundary at step 9
    state = torch.load(cut / "last.pt", weights_only=True)["data_state"]
    assert json.loads(json.dumps(state)) == state  # plain data


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(port), "-m", "avprep", "pretrain"]  # fmt: skip


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_see_the_same_keys(demo_shards, tmp_path):
    """2 ranks x 1 worker (gloo): 4 steps an epoch; saved at step 3 or 6 (mid-epoch)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = subprocess.run([*_torchrun(29561), *_args(demo_shards, whole, workers=1, save_every=3)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = _killed_and_resumed(demo_shards, cut, workers=1, launch=_torchrun(29562), at=3,
                               save_every=3)  # fmt: skip
    assert "starts anew" not in said
    for rank in (0, 1):
        assert len(read_keys(whole, rank)) == 14
        assert read_keys(cut, rank) == read_keys(whole, rank), rank
    assert read_keys(whole, 0) != read_keys(whole, 1)


@pytest.mark.slow
def test_resume_on_fewer_ranks_says_so_in_one_line(demo_shards, tmp_path):
    """2 ranks -> 1 mid-epoch: allowed, one line says the stream starts anew (an exact
    cover of the rest of the epoch in the new layout is not built yet)."""
    run = tmp_path / "shrunk"
    said = _killed_and_resumed(demo_shards, run, workers=1, launch=_torchrun(29563), at=3,
                               save_every=3, resume_with=PRETRAIN)  # fmt: skip
    lines = [x for x in said.splitlines() if "another data layout" in x]
    assert len(lines) == 1 and "world size 2 -> 1" in lines[0], said[-2000:]
    assert len(read_keys(run, 0)) == 14
