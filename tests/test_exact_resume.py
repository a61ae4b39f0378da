"""Exact mid-epoch resume (issue 18): a killed and resumed run trains on the same samples,
in the same order, step by step, as one never interrupted; one resumed with another world
size or worker count reads the rest of the epoch exactly once (``cmac_core.data.position``,
``cmac_core.data.shards.StreamPlan``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from cmac_core.config import DataConfig, preset
from cmac_core.data.loader import train_stream
from cmac_core.data.position import (
    DataState,
    Position,
    read_keys,
    read_log,
    resume_point,
    shards_digest,
)
from cmac_core.data.shards import StreamPlan

ENV = {"OMP_NUM_THREADS": "1"}


def _cfg(block: int | None = None) -> DataConfig:
    cfg = preset("tiny").data
    return cfg if block is None else DataConfig(**{**cfg.__dict__, "shuffle_buffer": block})


def _stream(shards, *, workers: int, rank: int = 0, world: int = 1, start=None, rest=None,
            epoch: int = 0, block: int | None = None):  # fmt: skip
    stream = train_stream(str(shards), _cfg(block), batch_size=2, workers=workers, rank=rank,
                          world_size=world, seed=3, start=start)  # fmt: skip
    stream.plan.pending.update(rest or {})
    stream.epoch.set(epoch)
    return stream


def _batches(shards, *, workers: int, n: int, start=None, block: int | None = None, **kw):
    """``n`` batches of a rank's loader: ``(keys per batch, Position after each batch,
    (key, epoch) of each clip)``."""
    stream = _stream(shards, workers=workers, start=start, block=block, **kw)
    pos = Position(max(1, workers), start)
    keys, states, clips = [], [], []
    for batch, _ in zip(stream.loader, range(n), strict=False):
        pos.note(batch["reader"])
        keys.append(batch["key"])
        states.append([list(r) for r in pos.readers])
        clips += list(zip(batch["key"], batch["reader"]["epochs"], strict=True))
    return keys, states, clips


@pytest.mark.parametrize(("workers", "block"), [(0, None), (1, None), (2, None), (0, 4), (2, 4)])
def test_a_resumed_loader_goes_on_with_the_same_batches(demo_shards, workers, block):
    keys, states, _ = _batches(demo_shards, workers=workers, n=14, block=block)
    again, _, _ = _batches(demo_shards, workers=workers, n=14, block=block)
    assert keys == again  # a pure function of the seed and the layout
    for at in (3, 8):  # mid-epoch (9 batches of 2 per epoch), and past the first epoch
        rest, _, _ = _batches(demo_shards, workers=workers, n=14 - at, start=states[at - 1],
                              block=block)  # fmt: skip
        assert rest == keys[at:], at


def test_an_epoch_reads_every_clip_once_and_a_resume_reads_only_its_block(demo_shards):
    _, _, clips = _batches(demo_shards, workers=0, n=18, block=4)  # two epochs of 18
    for epoch in (0, 1):
        keys = [k for k, e in clips if e == epoch]
        assert len(keys) == len(set(keys)) == 18, epoch
    assert [k for k, _ in clips[:18]] != [k for k, _ in clips[18:]]  # reshuffled
    _, states, _ = _batches(demo_shards, workers=0, n=8, block=4)
    stream = _stream(demo_shards, workers=0, start=states[6], block=4)  # 14 clips in
    next(iter(stream.loader))
    window = stream.loader.loader.pipeline[0].dataset.pipeline[1].window  # PlannedWindow
    assert 0 < window.cut <= 2 * 4  # its block, and the next one's first clip: not 14


def test_the_plan_shares_each_epoch_out_once_and_the_rest_after_any_positions():
    counts = [4, 4, 1, 4, 4, 1, 0, 3]
    rng = np.random.default_rng(0)
    for k, block in ((1, 4), (3, 5), (2, 1)):
        plan = StreamPlan(counts, n_shards=len(counts), clips_per_sample=k, seed=1, block=block)
        n = sum(counts) * k
        for readers in (1, 2, 3, 5):
            for epoch in (0, 1):
                spans = [plan.share(epoch, r, readers) for r in range(readers)]
                assert sorted(np.concatenate(spans).tolist()) == list(range(n))
                assert max(map(len, spans)) - min(map(len, spans)) <= 1
            for _ in range(5):  # readers stopped anywhere in epochs 2 and 3
                at = [(int(e), int(rng.integers(0, len(plan.share(e, r, readers)) + 1)))
                      for r, e in enumerate(rng.integers(2, 4, readers))]  # fmt: skip
                rest = plan.rest(at)
                for e in rest:
                    passed = [plan.passed(e, r, readers, c) if er == e else
                              plan.share(e, r, readers) if er > e else np.empty(0, int)
                              for r, (er, c) in enumerate(at)]  # fmt: skip
                    left = [i for a, b in rest[e] for i in range(a, b)]
                    assert sorted(np.concatenate([*passed, left]).tolist()) == list(range(n))
                    again = plan.with_pending(rest)  # shared out over 2 new readers
                    spans = [again.share(e, r, 2) for r in range(2)]
                    assert sorted(np.concatenate(spans).tolist()) == left


@pytest.mark.parametrize(("old", "new", "before"), [((2, 1), (1, 1), 3), ((1, 1), (1, 2), 4),
                                                    ((1, 2), (2, 1), 5), ((2, 0), (1, 2), 6)])  # fmt: skip
def test_a_loader_resumed_in_another_layout_reads_the_rest_of_the_epoch_once(
    demo_shards, old, new, before
):
    """Loaders of every rank of one layout take ``before`` batches each; loaders of another
    take over from their positions: the first epoch's 18 clips are each read once."""
    (world, workers), (world2, workers2) = old, new
    state = DataState(world, workers, 3, 0, "")
    clips = []
    for rank in range(world):
        _, states, got = _batches(demo_shards, workers=workers, n=before, rank=rank, world=world,
                                  block=4)  # fmt: skip
        state.readers.append(states[-1])
        clips += got
    stream = _stream(demo_shards, workers=workers2, world=world2, block=4)
    state.shards = shards_digest(stream.urls, stream.plan.counts)
    layout = DataState(world2, workers2, 3, 0, state.shards)
    for rank in range(world2):
        resumed = resume_point(state.to_dict(), layout, stream.plan, rank=rank, step=before,
                               per_epoch=18 // (2 * world))  # fmt: skip
        assert "another data layout" in resumed.note and "each read once" in resumed.note
        _, _, got = _batches(demo_shards, workers=workers2, n=12, rank=rank, world=world2,
                             start=resumed.start, rest=resumed.rest, epoch=resumed.epoch,
                             block=4)  # fmt: skip
        clips += got
    first = Counter(k for k, e in clips if e == 0)
    assert len(first) == 18 and set(first.values()) == {1}, first
    second = Counter(k for k, e in clips if e == 1)
    assert set(second.values()) == {1}  # begun in the new layout, none twice


def test_a_damaged_position_or_another_seed_resumes_with_one_line(demo_shards):
    stream = _stream(demo_shards, workers=1)
    digest = shards_digest(stream.urls, stream.plan.counts)
    layout = DataState(2, 1, 0, 0, digest, readers=[[[0, 10, 5]], [[1, 8, 5]]])
    saved = layout.to_dict()
    same = resume_point(saved, layout, stream.plan, rank=1, step=10, per_epoch=4)
    assert (same.epoch, same.start, same.note) == (0, [[1, 8, 5]], None)
    assert resume_point(None, layout, stream.plan, rank=0, step=0, per_epoch=4).start == []
    seeded = DataState(2, 1, 7, 0, digest)
    note = resume_point(saved, seeded, stream.plan, rank=0, step=10, per_epoch=9).note
    assert "seed 0 -> 7" in note and "starts anew" in note
    for bad in ({**saved, "readers": [[["x", 1, 1]]]}, {**saved, "epoch": -1}, {"version": 2},
                {**saved, "readers": [[[0, 1]], [[0, 1]]]}, {**saved, "version": 1}):  # fmt: skip
        got = resume_point(bad, layout, stream.plan, rank=0, step=10, per_epoch=4)
        assert (got.epoch, got.start) == (2, []) and "not readable" in got.note
    assert "no data position" in resume_point(None, layout, stream.plan, rank=0, step=10,
                                              per_epoch=4).note  # fmt: skip


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
                        save_every: int = 2, resume_with: list[str] | None = None,
                        workers_after: int | None = None) -> tuple[str, int]:  # fmt: skip
    """A run killed (SIGKILL, every process of it) once ``step-{at}.pt`` exists, then
    resumed to its end (under ``resume_with``, else ``launch``; with ``workers_after``
    loader workers, else ``workers``): ``(the resumed run's output, the step it resumed at)``."""
    _kill_9_tree_when([*launch, *_args(shards, run, workers=workers, save_every=save_every)],
                      (run / f"step-{at}.pt").exists)  # fmt: skip
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert at <= saved < 14, saved  # killed mid-run
    w = workers if workers_after is None else workers_after
    args = _args(shards, run, workers=w, save_every=save_every)
    proc = subprocess.run([*(resume_with or launch), *args, "--resume"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **ENV})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr + proc.stdout, saved


PRETRAIN = [sys.executable, "-m", "avprep", "pretrain"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_and_resume_sees_the_same_keys_step_by_step(demo_shards, tmp_path, workers):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_cli("pretrain", *_args(demo_shards, whole, workers=workers), env=ENV)
    said, _ = _killed_and_resumed(demo_shards, cut, workers=workers, launch=PRETRAIN)
    assert "starts anew" not in said and "another data layout" not in said
    keys = read_keys(whole)
    assert len(keys) == 14 and all(len(k) == 2 for k in keys)
    assert read_keys(cut) == keys  # across the epoch boundary at step 9
    assert read_log(cut) == read_log(whole)  # and each clip's epoch
    state = torch.load(cut / "last.pt", weights_only=True)["data_state"]
    assert json.loads(json.dumps(state)) == state  # plain data


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(port), "-m", "avprep", "pretrain"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_two_ranks_killed_and_resumed_see_the_same_keys(demo_shards, tmp_path, workers):
    """2 ranks x 1 or 2 workers (gloo): 4.5 steps an epoch; saved at step 3 or 6."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    port = 29561 + 10 * workers
    proc = subprocess.run([*_torchrun(port), *_args(demo_shards, whole, workers=workers, save_every=3)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    said, _ = _killed_and_resumed(demo_shards, cut, workers=workers, launch=_torchrun(port + 1),
                                  at=3, save_every=3)  # fmt: skip
    assert "starts anew" not in said
    for rank in (0, 1):
        assert len(read_keys(whole, rank)) == 14
        assert read_keys(cut, rank) == read_keys(whole, rank), rank
    assert read_keys(whole, 0) != read_keys(whole, 1)


def _epoch_keys(run: Path, upto: list[int], *, epoch: int) -> Counter:
    """How often each key was trained on in ``epoch``: rank r's at steps up to ``upto[r]``."""
    return Counter(k for r, last in enumerate(upto) for line in read_log(run, r)
                   if line["step"] <= last
                   for k, e in zip(line["keys"], line["epochs"], strict=True) if e == epoch)  # fmt: skip


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_on_one_read_the_rest_of_the_epoch_once(demo_shards, tmp_path):
    """2 ranks x 1 worker killed mid-epoch (saved at step 3: 12 of the epoch's 18 clips
    trained on), resumed on 1 rank: one line says so, and every key of the epoch is trained
    on exactly once across the two runs; the next epoch, in the new layout, repeats none."""
    run = tmp_path / "shrunk"
    said, saved = _killed_and_resumed(demo_shards, run, workers=1, launch=_torchrun(29563),
                                      at=3, save_every=3, resume_with=PRETRAIN)  # fmt: skip
    lines = [x for x in said.splitlines() if "another data layout" in x]
    assert len(lines) == 1 and "world size 2 -> 1" in lines[0], said[-2000:]
    assert "each read once" in lines[0] and "starts anew" not in said
    assert len(read_keys(run, 0)) == 14 and len(read_keys(run, 1)) >= saved
    first = _epoch_keys(run, [14, saved], epoch=0)  # rank 1's steps after `saved` were lost
    assert len(first) == 18 and set(first.values()) == {1}, first
    assert set(_epoch_keys(run, [14, saved], epoch=1).values()) == {1}


@pytest.mark.slow
def test_resumed_with_two_loader_workers_reads_the_rest_of_the_epoch_once(demo_shards, tmp_path):
    """1 rank x 1 worker killed mid-epoch, resumed with 2 loader workers: the epoch's keys
    are each trained on once across the two runs, and the next epoch's at most once."""
    run = tmp_path / "grown"
    said, _ = _killed_and_resumed(demo_shards, run, workers=1, launch=PRETRAIN, at=4,
                                  workers_after=2)  # fmt: skip
    lines = [x for x in said.splitlines() if "another data layout" in x]
    assert len(lines) == 1 and "loader workers 1 -> 2" in lines[0], said[-2000:]
    assert len(read_keys(run)) == 14
    first = _epoch_keys(run, [14], epoch=0)
    assert len(first) == 18 and set(first.values()) == {1}, first
    assert set(_epoch_keys(run, [14], epoch=1).values()) == {1}
