"""Runs on clusters: ranks, locks, kills and bad arguments.

W ranks writing into one DIR together cover every input exactly once; a rank
started twice is refused; a run killed with SIGKILL resumes where it stopped; bad
arguments exit 2 with one line. Inputs that hang the decoder: tests/test_timeouts.py.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_clips, processes_with, read_manifest, read_shards, run_cli, shard_workers

from avprep.discover import discover, partition, rank_world_from_env

RANK_VARS = (
    "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP",
)  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    return {**env, **extra}


def _popen(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "avprep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        **kw,
    )


def _wait_for(predicate, timeout_s: float = 120.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _assert_exactly_once(out: Path, sources: list[str], *, segments: int) -> list[dict]:
    """Every input once in the manifest, ok; every key once across shards; no temporaries."""
    rows = read_manifest(out).to_pylist()
    assert Counter(r["source"] for r in rows) == Counter(sources)
    assert all(r["status"] == "ok" for r in rows), [(r["source"], r["reason"]) for r in rows]
    ids = Counter(r["video_id"] for r in rows)
    assert all(n == 1 for n in ids.values()), ids
    samples = read_shards(out)  # fails on a key seen twice
    per_video = Counter(s["json"]["video_id"] for s in samples.values())
    assert per_video == dict.fromkeys(ids, segments)
    for r in rows:
        assert r["n_segments"] == segments
        assert all((out / shard).exists() for shard in r["shards"])
    assert list(out.rglob("*.tmp")) == []
    return rows


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("clips") / "in", 7, duration_s=2.0)


SHARD = ("--segment-seconds", "2", "--quiet")


# -- ranks ---------------------------------------------------------------------


# Each decoder a user can choose (pyav is auto's choice for these files; decord where
# installed): the rank and resume guarantees do not depend on which one decodes.
DECODERS = [
    "auto",
    "ffmpeg",
    pytest.param("decord", marks=pytest.mark.skipif(
        importlib.util.find_spec("decord") is None, reason="decord (avprep[decord]) not installed")),
]  # fmt: skip


@pytest.mark.parametrize("decoder", DECODERS)
def test_three_ranks_in_parallel_cover_every_input_once(clips, tmp_path, decoder):
    out = tmp_path / "out"
    folder = str(clips[0].parent)
    procs = [
        _popen(
            "shard",
            folder,
            "--out",
            str(out),
            "--rank",
            str(r),
            "--world-size",
            "3",
            "--workers",
            "1",
            "--decoder",
            decoder,
            *SHARD,
        )  # fmt: skip
        for r in range(3)
    ]
    for p in procs:
        _, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    rows = _assert_exactly_once(out, [str(c) for c in clips], segments=1)
    assert {r["decoder"] for r in rows} == {"pyav" if decoder == "auto" else decoder}
    rank_of = {r["source"]: r["rank"] for r in rows}
    owner = {i.source: r for r in range(3) for i in partition(discover([folder]), r, 3)}
    assert rank_of == owner and len(owner) == len(clips)
    shard_ranks = {p.name.split("-")[1] for p in out.glob("*.tar")}
    assert shard_ranks == {f"r{r:04d}" for r in owner.values()}


def test_a_grown_folder_keeps_every_input_on_its_rank(clips, tmp_path):
    """Files added between runs move no input to another rank: one row each, ok or failed."""
    folder = tmp_path / "in"
    folder.mkdir()
    for c in clips[:4]:
        os.link(c, folder / c.name)
    (folder / "broken.mp4").write_text("not a video")
    out = tmp_path / "out"
    for r in (0, 1):
        args = ("--rank", str(r), "--world-size", "2", "--workers", "1")
        run_cli("shard", str(folder), "--out", str(out), *args, *SHARD)
    owner = {i.source: r for r in (0, 1) for i in partition(discover([str(folder)]), r, 2)}
    for c in clips[4:]:  # names sorting first: every W-th input would now be another file
        os.link(c, folder / f"a{c.name}")
    for r in (0, 1):  # each rank alone, as a job array's task does, then both
        args = ("--rank", str(r), "--world-size", "2", "--workers", "1")
        proc = run_cli("shard", str(folder), "--out", str(out), *args, *SHARD)
        assert "unaccounted" not in proc.stderr
        rows = read_manifest(out).to_pylist()
        assert len(rows) == len({r["source"] for r in rows}), rows
    rows = {r["source"]: r for r in read_manifest(out).to_pylist()}
    added = {str(folder / f"a{c.name}") for c in clips[4:]}
    assert set(rows) == {str(folder / c.name) for c in clips[:4]} | added | {
        str(folder / "broken.mp4")
    }
    assert all(rows[s]["rank"] == r for s, r in owner.items())
    assert rows[str(folder / "broken.mp4")]["status"] == "failed"


ENV_CASES = [
    ({}, (0, 1)),
    ({"RANK": "3", "WORLD_SIZE": "8"}, (3, 8)),
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_NTASKS": "6"}, (1, 2)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, (2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}, (5, 8)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"},
     (4, 8)),  # --array=1-8
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_STEP": "2"}, (3, 4)),  # --array=1-7:2 runs 1, 3, 5, 7
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "1",
      "SLURM_NTASKS": "2"}, (5, 6)),  # array task 2 of 3, step task 1 of 2
    ({"RANK": "2"}, (0, 1)),  # half a pair is ignored
]  # fmt: skip


@pytest.mark.parametrize(("env", "want"), ENV_CASES)
def test_rank_world_from_env(env, want):
    assert rank_world_from_env(env) == want


def test_bad_env_variable_is_one_line(clips, tmp_path):
    proc = run_cli("shard", str(clips[0]), "--out", str(tmp_path / "out"), check=False,
                   env={"RANK": "zero", "WORLD_SIZE": "2"})  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "avprep: error: RANK='zero' is not an integer"


def test_env_variables_set_the_default_rank(clips, tmp_path):
    """torchrun's RANK/WORLD_SIZE for one half, Slurm's task ids for the other."""
    out = tmp_path / "out"
    folder = str(clips[0].parent)
    run_cli("shard", folder, "--out", str(out), "--workers", "1", *SHARD,
            env={"RANK": "1", "WORLD_SIZE": "2"})  # fmt: skip
    owner = {i.source: r for r in (0, 1) for i in partition(discover([folder]), r, 2)}
    rows = read_manifest(out).to_pylist()
    assert sorted(r["source"] for r in rows) == sorted(s for s, r in owner.items() if r == 1)
    assert {r["rank"] for r in rows} <= {1}  # (empty if rank 1 owns nothing)
    run_cli("shard", folder, "--out", str(out), "--workers", "1", *SHARD,
            env={"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})  # fmt: skip
    rows = _assert_exactly_once(out, [str(c) for c in clips], segments=1)
    assert {r["source"]: r["rank"] for r in rows} == owner
    # an explicit --rank wins over the environment (and this rank is already done)
    proc = run_cli("shard", folder, "--out", str(out), "--rank", "0", "--world-size", "2",
                   "--workers", "1", "--segment-seconds", "2",
                   env={"RANK": "1", "WORLD_SIZE": "2"})  # fmt: skip
    assert "rank 0/2" in proc.stdout
    _assert_exactly_once(out, [str(c) for c in clips], segments=1)


def test_another_world_size_on_the_same_dir_is_refused(clips, tmp_path):
    """Partitions of different world sizes overlap: mixing them would record inputs twice."""
    out = tmp_path / "out"
    (tmp_path / "broken.mp4").write_text("not a video")
    inputs = [str(clips[0]), str(clips[1]), str(tmp_path / "broken.mp4"), str(clips[2])]
    for r in range(2):  # broken.mp4 is rank 0's of 2 (and would be rank 2's of 3)
        run_cli("shard", *inputs, "--out", str(out), "--rank", str(r), "--world-size", "2",
                "--workers", "1", *SHARD)  # fmt: skip
    before = read_manifest(out).to_pylist()
    assert Counter(r["status"] for r in before) == {"ok": 3, "failed": 1}
    proc = run_cli("shard", *inputs, "--out", str(out), "--rank", "2", "--world-size", "3",
                   "--workers", "1", *SHARD, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("avprep: error: ") and "world_size" in proc.stderr
    assert read_manifest(out).to_pylist() == before


# -- one rank at a time ----------------------------------------------------------


def test_same_rank_twice_at_once_is_refused(clips, tmp_path):
    out = tmp_path / "out"
    args = ("shard", str(clips[0].parent), "--out", str(out), "--workers", "1", *SHARD)
    first = _popen(*args)
    lock = out / ".avprep" / "lock-r0000"
    try:
        _wait_for(lambda: lock.exists() and f" {first.pid}" in lock.read_text(), what="the lock")
        os.kill(first.pid, signal.SIGSTOP)  # held there, however fast its work would be done
        assert first.poll() is None, "the first run ended before the second started"
        second = run_cli(*args, check=False)
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=300)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avprep: error: rank 0 is already running")
    assert first.returncode == 0, stderr
    _assert_exactly_once(out, [str(c) for c in clips], segments=1)


# -- kill -9 and resume ------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_resume_after_kill_9(tmp_path, decoder):
    """SIGKILL the whole run twice, part way; the same command finishes the job."""
    clips = make_clips(tmp_path / "in", 12, duration_s=4.0)
    out = tmp_path / "out"
    args = (
        "shard",
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--workers",
        "2",
        "--shard-max-samples",
        "2",
        "--decoder",
        decoder,
        *SHARD,
    )  # fmt: skip  (a shard per video)
    committed: set[str] = set()
    for need in (1, 3):  # kill once the first shard is in place, then after three more
        before = len(list(out.glob("*.tar")))
        proc = _popen(*args, start_new_session=True)
        try:
            _wait_for(lambda p=proc, n=before + need: len(list(out.glob("*.tar"))) >= n
                      or p.poll() is not None, what="a committed shard")  # fmt: skip
            assert proc.poll() is None, f"the run finished before the kill: {proc.stderr.read()}"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        shards = {p.name for p in out.glob("*.tar")}
        assert committed <= shards  # nothing committed is ever taken back
        committed = shards
    done_before = {r["source"] for r in read_manifest(out).to_pylist() if r["status"] == "ok"}
    assert 0 < len(done_before) < len(clips)
    proc = run_cli(*args)
    rows = _assert_exactly_once(out, [str(c) for c in clips], segments=2)
    assert committed <= {p.name for p in out.glob("*.tar")}
    last_run = max(r["run"] for r in rows)
    assert all(r["run"] < last_run for r in rows if r["source"] in done_before)  # not redone
    again = run_cli(*args)  # a finished DIR: nothing to do
    assert _assert_exactly_once(out, [str(c) for c in clips], segments=2) == rows
    assert {r["decoder"] for r in rows} == {"pyav" if decoder == "auto" else decoder}
    assert again.returncode == proc.returncode == 0


def test_a_worker_killed_mid_run_is_replaced(tmp_path):
    """SIGKILL one worker: its video is failed 'worker died', the rest finish, each once."""
    clips = make_clips(tmp_path / "in", 8, duration_s=4.0)
    out = tmp_path / "out"
    proc = _popen("shard", str(tmp_path / "in"), "--out", str(out), "--workers", "2",
                  "--shard-max-samples", "2", *SHARD)  # fmt: skip
    try:
        _wait_for(lambda: list(out.glob("*.tar")) or proc.poll() is not None, what="a shard")
        workers = shard_workers(proc.pid)
        assert workers and proc.poll() is None
        os.kill(workers[0], signal.SIGKILL)
    finally:
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    rows = read_manifest(out).to_pylist()
    assert Counter(r["source"] for r in rows) == Counter(str(c) for c in clips)
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(failed) <= 1  # none if it was between videos
    assert all(r["reason"] == "worker died (exit code -9)" for r in failed), failed
    samples = read_shards(out)
    assert len(samples) == 2 * (len(clips) - len(failed))
    assert list(out.rglob("*.tmp")) == []
    assert not any(processes_with(str(c)) for c in clips)


def test_resume_rebuilds_a_lost_manifest_part(clips, tmp_path):
    """Killed between renaming a shard and writing its manifest part: rows rebuilt, not redone."""
    out = tmp_path / "out"
    args = ("shard", str(clips[0].parent), "--out", str(out), "--workers", "1",
            "--shard-max-samples", "2", *SHARD)  # fmt: skip
    run_cli(*args)
    first = {r["video_id"]: r for r in read_manifest(out).to_pylist()}
    parts = sorted((out / "manifest").glob("shard-*.parquet"))
    assert len(parts) >= 3
    parts[1].unlink()
    (out / "shard-r0000-001-w00-00099.tar.tmp").write_bytes(b"half a shard")
    run_cli(*args)
    rows = _assert_exactly_once(out, [str(c) for c in clips], segments=1)
    assert {r["video_id"]: (r["shards"], r["run"]) for r in rows} == {
        vid: (r["shards"], r["run"]) for vid, r in first.items()
    }
    # The rebuilt rows carry what the lost ones did: media facts, duration, label, extra
    # (v2 keeps media and extra as JSON text in the sample json).
    rebuilt = {r["video_id"]: r for r in rows}
    differ = {(vid, k, r[k], first[vid][k]) for vid, r in rebuilt.items() for k in r
              if r[k] != first[vid][k] and k != "seconds"}  # fmt: skip  (time spent: not in a shard)
    assert not differ


def test_a_manifest_part_cut_by_a_kill_is_invisible_to_readers(clips, tmp_path, monkeypatch):
    """A kill between writing a manifest part and renaming it leaves a temporary that
    ``pyarrow.dataset`` skips (its name starts with "."), and the next run removes it."""
    from avprep import manifest

    out = tmp_path / "out"
    run_cli("shard", str(clips[0]), "--out", str(out), "--workers", "1", *SHARD)
    row = read_manifest(out).to_pylist()[0]

    def killed(src, dst):  # the process dies after writing, before the rename
        raise SystemExit("killed")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(SystemExit):
        manifest.write_part(out / "manifest" / "shard-r0000-002-w00-00001.parquet", [row])
    monkeypatch.undo()
    (left,) = [p for p in (out / "manifest").iterdir() if p.name.endswith(".tmp")]
    assert len(read_manifest(out)) == 1  # the reader skips it
    run_cli("shard", str(clips[0]), "--out", str(out), "--workers", "1", *SHARD)
    assert not left.exists()


def test_the_manifest_reads_as_pyarrow_dataset_reads_it(clips, tmp_path):
    """The manifest reader (parts read one by one and conformed to the schema, so the shard
    command never imports pyarrow.dataset and pandas) gives the table pyarrow.dataset gives
    with the schema; a part of another schema is still damage."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from avprep import manifest

    out = tmp_path / "out"
    run_cli("shard", *map(str, clips[:3]), "--out", str(out), "--workers", "2",
            "--shard-max-samples", "1", *SHARD)  # a part per sample, whichever worker ran it
    parts = sorted((out / "manifest").glob("*.parquet"))
    got = manifest.read(out)
    want = ds.dataset([str(p) for p in parts], schema=manifest.SCHEMA, format="parquet")
    assert len(parts) >= 2 and len(got) == 3
    assert got.equals(want.to_table()) and got.schema.equals(manifest.SCHEMA)
    pq.write_table(pq.read_table(parts[0]).drop_columns(["run"]), parts[0])  # a null run
    with pytest.raises(manifest.DamagedPart, match="another schema"):
        manifest.read(out)
