"""No silent hangs: two real gloo ranks (the environment torchrun sets), one stopped with
SIGSTOP or given far more work than the other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from test_gpu_step import _free_port, rank_env

from cmac_core.embed.table import committed_keys


def _avprep(rank: int, port: int, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avprep", *args], env=rank_env(rank, 2, port, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _steps_logged(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.slow
def test_a_stopped_rank_is_named_and_the_others_stop_in_bounded_time(demo_shards, tmp_path):
    """Rank 1 stopped (SIGSTOP) mid-run: rank 0 waits in the step's all-reduce, its watchdog
    sees rank 1's heartbeat stop and ends it after optim.collective_timeout_s with one
    line naming rank 1 (before: a silent wait until gloo's 30 minutes)."""
    run, port = tmp_path / "run", _free_port()
    args = ("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "500",
            "--batch-size", "4", "--device", "cpu", "--set", "optim.collective_timeout_s=5")  # fmt: skip
    procs = [_avprep(r, port, *args) for r in range(2)]
    try:
        deadline = time.monotonic() + 300
        while _steps_logged(run) < 3 and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.1)
        assert _steps_logged(run) >= 3, (
            procs[0].stderr.read() if procs[0].poll() is not None else "slow"
        )
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped_at = _steps_logged(run)
        _, err = procs[0].communicate(timeout=120)  # bounded: the test fails here if it hangs
    finally:
        for p in procs:
            with_children_killed(p)
    lines = err.strip().splitlines()
    assert procs[0].returncode == 1 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("avprep: error: rank 1 (no heartbeat for "), lines[-1]
    assert "stopped answering: rank 0 waited" in lines[-1] and "collective timeout 5 s" in lines[-1]
    assert "avprep: rank 0/2" in err and "backend gloo" in err
    assert _steps_logged(run) <= stopped_at + 1  # rank 0 never went on without rank 1


def with_children_killed(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)  # a stopped process takes SIGKILL too
    p.wait(timeout=60)


@pytest.mark.slow
def test_ranks_that_finish_early_wait_off_collectives(demo_shards, tiny_ckpt, tmp_path):
    """embed and localize with rank 0's only shard arriving 16 s late (a pipe: that sleeps
    first) and a collective timeout of 4 s (the backend's: 8 s): rank 1, done in a second,
    waits on the rendezvous store for rank 0, not in an all-reduce that would time out;
    both finish, and every key is embedded and mapped once."""
    shards = sorted(str(p) for p in demo_shards.glob("*.tar"))[:2]
    spec = f"pipe:sleep 16; cat {shards[0]}::{shards[1]}"
    emb, maps = tmp_path / "emb", tmp_path / "maps"
    timeout = {"AVPREP_COLLECTIVE_TIMEOUT_S": "4"}
    for args in (("embed", spec, "--ckpt", str(tiny_ckpt), "--out", str(emb), "--device", "cpu", "--workers", "1"),
                 ("localize", spec, "--ckpt", str(tiny_ckpt), "--out", str(maps), "--device", "cpu")):  # fmt: skip
        port = _free_port()
        procs = [_avprep(r, port, *args, **timeout) for r in range(2)]
        try:
            outs = [p.communicate(timeout=300) for p in procs]
        finally:
            for p in procs:
                with_children_killed(p)
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-3000:]
        assert "collective timeout 4 s" in outs[1][1]
    keys = committed_keys(emb)
    expected = set()
    for shard in shards:
        with tarfile.open(shard) as tar:
            expected |= {m.name.split(".", 1)[0] for m in tar}
    assert sorted(keys) == sorted(expected)
    assert {p.stem for p in maps.glob("*[0-9].npy")} == set(keys)
    assert json.loads(next(maps.glob("*.json")).read_text())["key"] in keys
