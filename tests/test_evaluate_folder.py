"""Whose folder an ``avprep evaluate`` run may use, and stopping it: a benchmark synth would
refuse, a file or foreign folder, a CUDA device that is not here, runs of other training
settings (evaluate.json, or an older folder's runs) are refused in one line before anything
is written; SIGTERM mid-training stops it in one line and the same command resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli

from cmac_core.evaluate import folder
from cmac_core.evaluate.config import EvaluateConfig


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--classes", "6", "--silent-classes", "4"],
            "--classes 6 plus --silent-classes 4 is more than the 8",
        ),
        (["--silent-classes", "9"], "--silent-classes must be an integer in 0..6, got 9"),
    ],
)
def test_evaluate_refuses_a_benchmark_synth_would_refuse_before_writing(tmp_path, args, message):
    proc = run_cli("evaluate", str(tmp_path / "ev"), "--quick", *args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/afile"], "{tmp}/afile is a file, not a folder"),
        (["{tmp}/afile/sub"], "cannot write to {tmp}/afile/sub: {tmp}/afile is a file"),
        (["{tmp}/ev", "--report", "{tmp}/afile"], "{tmp}/afile is a file, not a folder"),
        (["{tmp}/ev", "--report", "{tmp}/afile/r"], "cannot write to {tmp}/afile/r: {tmp}/afile is a file"),
        (["{tmp}/junk"], "{tmp}/junk is not empty and holds no avprep evaluate run; choose a new folder"),
        (["{tmp}/ev", "--crop-px", "128"], "--crop-px 128 is larger than the frames (--size 112)"),
        (["{tmp}/ev", "--arms", "avid,cmac,avid"], "--arms names avid twice"),
        (["{tmp}/ev", "--size", "16"], "--size must be an integer in 64..512, got 16"),
    ],
)
def test_evaluate_refuses_a_folder_it_cannot_use_before_writing(tmp_path, args, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_cli("evaluate", *args, "--quick", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["avprep: error: " + message.replace("{tmp}", str(tmp_path))]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_evaluate_refuses_a_cuda_device_that_is_not_here(tmp_path):
    proc = run_cli("evaluate", str(tmp_path / "ev"), "--quick", "--device", "cuda", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "avprep: error: --device cuda: no CUDA device is available here"
    assert not (tmp_path / "ev").exists()


def test_a_folder_from_before_the_settings_record_is_checked_against_its_runs(tmp_path):
    """A folder without evaluate.json: its runs' config.json say how they were trained."""
    out = tmp_path / "ev"
    (out / "runs" / "avid-s0").mkdir(parents=True)
    (out / "runs" / "avid-s0" / "config.json").write_text(json.dumps(
        {"optim": {"steps": 300, "batch_size": 16}, "data": {"crop_px": 112}}))  # fmt: skip
    cpu = torch.device("cpu")
    folder.check(EvaluateConfig(out_dir=str(out)), cpu)  # the same settings: fine
    with pytest.raises(folder.FolderError, match="made with --steps 300, not 50"):
        folder.check(EvaluateConfig(out_dir=str(out), steps=50), cpu)
    folder.record(EvaluateConfig(out_dir=str(out)), cpu)
    assert json.loads((out / "evaluate.json").read_text()) == {
        "preset": "tiny", "steps": 300, "batch_size": 16, "crop_px": 112}  # fmt: skip
    with pytest.raises(folder.FolderError, match="made with --config tiny, not base"):
        folder.check(EvaluateConfig(out_dir=str(out), preset="base"), cpu)


@pytest.mark.slow
def test_evaluate_stopped_by_sigterm_resumes_without_redoing_anything(tmp_path):
    """Slurm's scancel (SIGTERM to the job's processes) mid-training: a one-line message and
    exit 130, then the same command goes on from the run's last checkpoint, redoing no
    finished stage, and the run logs every step once."""
    out = tmp_path / "ev"
    args = ["evaluate", str(out), "--quick", "--videos", "16", "--test-videos", "8", "--steps", "8",
            "--batch-size", "8", "--sync-clips", "4", "--arms", "random_init,avid"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "avprep", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 600
    while not (out / "runs" / "avid-s0" / "step-2.pt").exists() and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint in 10 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    said = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, said
    assert said.strip().splitlines()[-1] == "avprep: interrupted; run the same command again to resume"
    spent = json.loads((out / "timings.json").read_text())["train avid-s0 (stopped)"]
    again = run_cli(*args, timeout=600)
    assert "synth" not in again.stderr and "shard" not in again.stderr
    assert "features of random_init-s0" not in again.stderr
    assert "training avid-s0" in again.stderr
    steps = [json.loads(line)["step"]
             for line in (out / "runs" / "avid-s0" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert steps == list(range(1, 9)), steps
    timings = json.loads((out / "timings.json").read_text())
    assert timings["train avid-s0"] >= spent > 0  # both runs' seconds, the stopped record gone
    assert not any(k.endswith("(stopped)") for k in timings), timings
