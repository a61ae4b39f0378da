"""avprep shard's arguments: every bad value is refused in one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from avprep.synth import make_demo_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return [make_demo_video(tmp_path_factory.mktemp("clips") / "clip00.mp4", duration_s=2.0,
                            size=(96, 64))]  # fmt: skip


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "no_path.csv").write_text("file,label\na.mp4,dog\n")
    (tmp_path / "empty_path.csv").write_text("path,label\n,dog\n")
    (tmp_path / "broken.jsonl").write_text('{"path": "a.mp4"}\n{"path": \n')
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but not really")
    (tmp_path / "a file").write_text("")
    return {p.name: p for p in tmp_path.iterdir()}


BAD_ARGS = {
    "fps 0": ["--fps", "0"],
    "negative segment": ["--segment-seconds", "-2"],
    "min over segment": ["--segment-seconds", "2", "--min-seconds", "3"],
    "rank outside world": ["--rank", "2", "--world-size", "2"],
    "world 0": ["--world-size", "0"],
    "workers -1": ["--workers", "-1"],
    "timeout 0": ["--timeout", "0"],
    "timeout inf": ["--timeout", "inf"],
    "timeout past a timer": ["--timeout", "1e12"],
    "fps nan": ["--fps", "nan"],
    "bands above nyquist": ["--sample-rate", "8000", "--spec-preset", "vggish64"],
    "empty mel bands": ["--sample-rate", "8000"],
    "segments without a column": ["--segment-seconds", "0.02", "--min-seconds", "0.01"],
    "unknown preset": ["--spec-preset", "mfcc"],
    "jpeg quality": ["--jpeg-quality", "101"],
    "missing input": ["{tmp}/does not exist.mp4"],
    "manifest without path": ["{tmp}/no_path.csv"],
    "manifest with an empty path": ["{tmp}/empty_path.csv"],
    "broken jsonl": ["{tmp}/broken.jsonl"],
    "broken parquet": ["{tmp}/broken.parquet"],
    "out under a file": ["--out", "{tmp}/a file/out"],
    "out is a file": ["--out", "{tmp}/a file"],
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments_exit_2_with_one_line(case, clips, tmp_path):
    _bad_inputs(tmp_path)
    extra = [a.replace("{tmp}", str(tmp_path)) for a in BAD_ARGS[case]]
    out = str(tmp_path / "out")
    proc = run_cli("shard", str(clips[0]), "--out", out, *extra, check=False, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("avprep: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    if not case.startswith("out "):
        assert not (tmp_path / "out").exists()  # nothing written for a bad command


def test_unwritable_dir_names_the_cause(clips, tmp_path):
    (tmp_path / "a file").write_text("")
    proc = run_cli("shard", str(clips[0]), "--out", str(tmp_path / "a file" / "out"),
                   check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"avprep: error: cannot write to {tmp_path / 'a file' / 'out'}: Not a directory"
    )
