"""The command line as a person meets it: help, missing ffmpeg, entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import run_cli


def test_help_imports_nothing_heavy():
    code = (
        "import sys, avprep.cli\n"
        "heavy = [m for m in ('torch', 'torchaudio', 'decord', 'numpy', 'pyarrow', 'webdataset')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_help_lists_commands_and_options():
    proc = run_cli("shard", "--help")
    for option in ("--fps", "--short-side", "--segment-seconds", "--min-seconds", "--sample-rate",
                   "--spec-preset", "--keep-audio", "--jpeg-quality", "--shard-max-samples",
                   "--shard-max-bytes", "--workers", "--rank", "--world-size", "--timeout",
                   "--strict", "--quiet"):  # fmt: skip
        assert option in proc.stdout, option
    top = run_cli("--help").stdout
    assert all(cmd in top for cmd in ("shard", "inspect", "demo"))


def test_console_script_is_installed():
    exe = shutil.which("avprep", path=os.path.dirname(sys.executable))
    assert exe is not None
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "shard" in proc.stdout


def test_without_ffmpeg_says_so_in_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    env = {"PATH": str(tmp_path / "empty-bin")}  # python is run by absolute path
    proc = run_cli(
        "shard", str(tmp_path / "in"), "--out", str(tmp_path / "out"), check=False, env=env
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ffmpeg not found" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # bad input changes nothing else


def test_usage_errors_are_one_line(tmp_path):
    for args, text in ((["shard", str(tmp_path), "--fpss", "3"], "No such option: --fpss"),
                       (["shard", str(tmp_path), "--fps", "abc", "--out", "x"], "Invalid value for '--fps'"),
                       (["shard", str(tmp_path)], "Missing option '--out'"),
                       (["nosuch"], "No such command")):  # fmt: skip
        proc = run_cli(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("avprep: error: ") and text in lines[0]


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), "--videos", "2", "--steps", "3", "--workers", "2",
                   env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert "3 steps of the tiny CMAC model" in proc.stdout
    assert len(list((out / "shards").glob("*.tar"))) >= 1
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    assert (out / "run" / "last.pt").exists()
    assert len(list((out / "embeddings").glob("part-*.parquet"))) == 1
    assert (out / "embeddings" / "_per_video" / "videos.parquet").exists()
    page = (out / "localize" / "index.html").read_text()
    assert page.count("<figure>") == len(list((out / "localize").glob("*.npy"))) == 4
    again = run_cli(
        "demo", "--out", str(out), "--videos", "2", "--steps", "3", env={"OMP_NUM_THREADS": "1"}
    )
    assert (
        "already complete" in again.stdout
        and "0 segment embeddings (4 already there)" in again.stdout
    )
