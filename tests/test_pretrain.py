"""avprep pretrain on CPU: the tiny config on demo shards, real processes, real shards."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_when, run_cli

from avprep.writer import tar_member
from cmac_core import checkpoint
from cmac_core.schedule import WarmupCosine

ENV = {"OMP_NUM_THREADS": "1"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_tensorboard_matches_metrics(run: Path) -> None:
    """TensorBoard's own reader finds every number of every metrics.jsonl record, once,
    as ``train/<key>`` at its step (after its purge of steps a resumed run logged again)."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run))
    acc.Reload()
    records = metrics(run)
    keys = {k for r in records for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert set(acc.Tags()["scalars"]) == {f"train/{k}" for k in keys}
    for key in keys:
        logged = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        expected = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), key


def test_loss_falls_and_checkpoints_are_plain_data(demo_shards, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny",
                   "--steps", "30", "--save-every", "10", env=ENV)  # fmt: skip
    assert "30 steps" in proc.stdout
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 31))
    first = np.mean([r["nce"] for r in records[:3]])
    last = np.mean([r["nce"] for r in records[-5:]])
    assert last < 0.6 * first, (first, last)
    assert records[-1]["attention_weight"] == 1.0 and records[0]["attention_weight"] == 0.0
    assert all(np.isfinite(r["att_v"]) and np.isfinite(r["att_a"]) for r in records)
    assert sorted(p.name for p in run.glob("*.pt")) == [
        "last.pt",
        "step-10.pt",
        "step-20.pt",
        "step-30.pt",
    ]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["format"] == checkpoint.FORMAT and ckpt["step"] == 30
    assert ckpt["config"]["model"]["embed_dim"] == 32 and ckpt["arch"] == "cmac"
    assert ckpt["scheduler"]["name"] == "warmup_cosine"
    assert "video.stem.0.weight" in ckpt["model"]  # unwrapped: no "module." prefix
    again = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "30",
                    check=False)  # fmt: skip
    assert again.returncode == 2 and "--resume" in again.stderr


def test_avid_baseline_trains_without_attention_terms(demo_shards, tmp_path):
    run = tmp_path / "avid"
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "3",
            "--method", "avid", env=ENV)  # fmt: skip
    assert all(set(r) >= {"nce", "loss"} and "att_v" not in r for r in metrics(run))
    # its heads see pooled features only: localize draws the Grad-CAM, and says so
    maps = tmp_path / "maps"
    run_cli("localize", str(demo_shards), "--ckpt", str(run / "last.pt"), "--out", str(maps),
            "--limit", "2", "--device", "cpu", env=ENV)  # fmt: skip
    infos = [json.loads(p.read_text()) for p in sorted(maps.glob("*.json"))]
    assert len(infos) == 2 and all(i["map"] == "gradcam_v" for i in infos)
    assert len(list(maps.glob("*.gradcam.npy"))) == 2
    assert (maps / "index.html").read_text().count("map: Grad-CAM") == 2


@pytest.mark.slow
def test_two_process_gloo_run_equal_steps_on_uneven_shards(demo_shards, tmp_path):
    shards = sorted(str(p) for p in demo_shards.glob("*.tar"))[:3]  # 3 shards for 2 ranks
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "avprep", "pretrain", "::".join(shards), "--out", str(run), "--config", "tiny",
           "--epochs", "3", "--batch-size", "4"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["step"] == ranks[1]["step"] > 0
    assert metrics(run)[-1]["step"] == ranks[0]["step"]


@pytest.mark.slow
def test_kill_9_then_resume_continues_the_schedule(demo_shards, tmp_path):
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "avprep", "pretrain", str(demo_shards), "--out", str(run),
            "--config", "tiny", "--steps", "40", "--save-every", "5"]  # fmt: skip
    kill_when(args, (run / "step-10.pt").exists, env=ENV)
    assert (run / "step-10.pt").exists()
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 10 <= saved < 40
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "40",
            "--save-every", "5", "--resume", env=ENV)  # fmt: skip
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 41))  # steps after `saved` logged once
    cfg = json.loads((run / "config.json").read_text())["optim"]
    schedule = WarmupCosine(cfg["lr"], min(cfg["warmup_steps"], 4), 40)
    for r in records:
        assert r["lr"] == pytest.approx(schedule(r["step"] - 1))
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 40


@pytest.mark.slow
def test_sigterm_to_the_whole_job_stops_in_one_line_and_leaves_no_process(demo_shards, tmp_path):
    """Slurm's scancel: SIGTERM to the run and its loader workers at once. The run stops as
    Ctrl-C stops it (exit 130, one line saying how to go on), none of its processes outlives
    it (the workers leave stopping to it), and --resume logs every step once."""
    run = tmp_path / "run"
    args = ["pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "12",
            "--save-every", "2", "--workers", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "avprep", *args], env={**os.environ, **ENV},
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not (run / "step-4.pt").exists() and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint in 5 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    said = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, said
    assert said.strip().splitlines()[-1] == (
        "avprep: interrupted; run the same command with --resume to go on from its last checkpoint"
    ), said
    deadline = time.time() + 30
    while _group_alive(proc.pid):
        assert time.time() < deadline, "a process of the stopped run is still running"
        time.sleep(0.1)
    run_cli(*args, "--resume", env=ENV)
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _rewrite_shard(src: Path, dst: Path, edit) -> None:
    """Copy a shard member by member through ``edit(name, data) -> {name: data}``."""
    with tarfile.open(src) as tar, open(dst, "wb") as out:
        for m in tar:
            for name, data in edit(m.name, tar.extractfile(m).read()).items():
                out.write(tar_member(name, data))
        out.write(b"\0" * 1024)


def test_pickle_member_is_refused(demo_shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()

    def add_pickle(name, data):
        out = {name: data}
        if name.endswith(".json"):
            out[name.replace(".json", ".pyd")] = b"\x80\x04K\x01."  # pickle of the int 1
        return out

    for src in sorted(demo_shards.glob("*.tar")):
        _rewrite_shard(src, bad / src.name, add_pickle)
    proc = run_cli("pretrain", str(bad), "--out", str(tmp_path / "run"), "--config", "tiny", "--steps", "2",
                   check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing pickle-based member" in lines[0], proc.stderr[-2000:]


def test_non_finite_spectrograms_are_damage_and_a_run_of_only_damage_stops(demo_shards, tmp_path):
    bad = tmp_path / "nan"
    bad.mkdir()

    def nan_spec(name, data):
        if name.endswith(".spec.npy"):
            spec = np.load(io.BytesIO(data))
            buf = io.BytesIO()
            np.save(buf, np.full_like(spec, np.nan))
            data = buf.getvalue()
        return {name: data}

    shards = sorted(demo_shards.glob("*.tar"))  # how many depends on the demo's worker count
    for src in shards:
        _rewrite_shard(src, bad / src.name, nan_spec)
    proc = run_cli("pretrain", str(bad), "--out", str(tmp_path / "run"), "--config", "tiny", "--steps", "3",
                   check=False, env=ENV)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"no readable sample in any of the {len(shards)} shards" in lines[0] and "NaN or inf" in lines[0]
    assert not (tmp_path / "run").exists()  # failed before its first step: no run dir left
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    proc = run_cli("pretrain", str(bad), "--out", str(kept), "--config", "tiny", "--steps", "3",
                   check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 2 and (kept / "notes.txt").read_text() == "mine"


def test_non_finite_loss_stops_with_a_clear_message(demo_shards, tmp_path):
    run = tmp_path / "run"
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "2",
            "--device", "cpu", env=ENV)  # fmt: skip
    ckpt = torch.load(run / "last.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name].fill_(float("nan"))  # a model gone bad: every loss is NaN
    torch.save(ckpt, run / "last.pt")
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "4",
                   "--resume", "--device", "cpu", check=False, env=ENV)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "loss is not finite at step 2 (nan/inf); stopped. last good checkpoint:" in lines[-1]


def test_resume_refuses_another_model_and_a_finished_run_without_writing(demo_shards, tmp_path):
    run = tmp_path / "run"
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "3",
            "--device", "cpu", env=ENV)  # fmt: skip

    def files():  # the run's files; a refused run only takes and leaves the folder's lock
        return {
            p.name: p.read_bytes()
            for p in run.iterdir()
            if p.is_file() and not p.name.startswith(".lock")
        }

    before = files()
    refusals = {
        ("--config", "base", "--steps", "6", "--batch-size", "8", "--workers", "1"): "model (",
        ("--config", "tiny", "--method", "avid", "--steps", "6"): "loss (method)",
        ("--config", "tiny", "--steps", "3"): "already at step 3 (this run stops at step 3)",
        ("--config", "tiny", "--steps", "2"): "give more --steps to continue",
        ("--config", "tiny"): "give more --steps",  # one epoch of the demo shards: 2 steps
    }
    for args, text in refusals.items():
        proc = run_cli("pretrain", str(demo_shards), "--out", str(run), *args, "--resume",
                       "--device", "cpu", check=False, env=ENV)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and text in lines[0], proc.stderr[-2000:]
        assert files() == before
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "5",
            "--lr", "5e-4", "--resume", "--device", "cpu", env=ENV)  # fmt: skip
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5]
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 5


def test_metrics_hold_one_record_per_step_after_resume_and_restart(demo_shards, tmp_path):
    run = tmp_path / "run"
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "6",
            "--save-every", "3", "--device", "cpu", env=ENV)  # fmt: skip
    # As if killed after logging step 6 but before its checkpoint, mid-way through a record.
    (run / "step-6.pt").unlink()
    os.replace(run / "step-3.pt", run / "last.pt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    first_events = sorted(run.glob("events.out.tfevents.*"))
    assert len(first_events) == 1
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "8",
            "--save-every", "3", "--resume", "--device", "cpu", env=ENV)  # fmt: skip
    assert [r["step"] for r in metrics(run)] == list(range(1, 9))
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # steps 4-6 are in both files
    assert_tensorboard_matches_metrics(run)  # the resumed run's 4-6, once
    # As if killed before the first checkpoint: a new run in the same folder starts a new log.
    for p in run.glob("*.pt"):
        p.unlink()
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "2",
            "--device", "cpu", env=ENV)  # fmt: skip
    assert [r["step"] for r in metrics(run)] == [1, 2]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the earlier attempt's removed
    assert_tensorboard_matches_metrics(run)


def test_without_tensorboard_only_metrics_jsonl_is_written(tmp_path):
    """tensorboard absent (``sys.modules`` entry None: an import of it fails, as when it is
    not installed): the records still go to metrics.jsonl, no event file, nothing said."""
    code = (
        "import sys\nsys.modules['tensorboard'] = None\n"
        "from pathlib import Path\nfrom cmac_core.metrics import MetricsLog\n"
        f"log = MetricsLog(Path({str(tmp_path)!r}))\n"
        "assert log.tensorboard is None\n"
        "log.write({'step': 1, 'loss': 2.5, 'lr': 0.001})\nlog.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == "", proc.stderr
    assert metrics(tmp_path) == [{"step": 1, "loss": 2.5, "lr": 0.001}]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_run_that_fails_before_its_first_step_leaves_no_run_dir(demo_shards, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shard-000.tar").write_bytes(b"not a tar file" * 100)
    cases = [(str(empty), ()), (str(tmp_path / "missing"), ()), (str(bad), ()),
             (str(demo_shards), ("--lr", "inf"))]  # fmt: skip
    for i, (shards, extra) in enumerate(cases):
        run = tmp_path / "out" / f"run-{i}"
        proc = run_cli("pretrain", shards, "--out", str(run), "--config", "tiny", "--steps", "2",
                       "--device", "cpu", *extra, check=False, env=ENV)  # fmt: skip
        assert proc.returncode != 0 and not run.exists(), (extra, proc.stderr[-2000:])


def test_config_files_of_another_shape_and_an_out_that_is_a_file(demo_shards, tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "int.json").write_text('{"model": 5}')
    (tmp_path / "a file").write_text("")
    cases = [(["--config", str(tmp_path / "list.json")], "not a cmac_core config"),
             (["--config", str(tmp_path / "int.json")], "not a cmac_core config"),
             (["--config", "tiny", "--out", str(tmp_path / "a file")], "is a file, not a run folder")]  # fmt: skip
    for extra, text in cases:
        out = ["--out", str(tmp_path / "run")] if "--out" not in extra else []
        proc = run_cli("pretrain", str(demo_shards), *out, *extra, "--steps", "2", "--device", "cpu",
                       check=False, env=ENV)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_resume_from_weights_of_another_shape_says_one_line(demo_shards, tmp_path):
    run = tmp_path / "run"
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "2",
            "--device", "cpu", env=ENV)  # fmt: skip
    ckpt = torch.load(run / "last.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.dim() == 2)
    ckpt["model"][name] = torch.zeros(3, 3)  # the same config, tampered weights
    torch.save(ckpt, run / "last.pt")
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "4",
                   "--resume", "--device", "cpu", check=False, env=ENV)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert name in lines[0] and "last.pt" in lines[0]
