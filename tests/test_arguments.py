"""avprep shard's arguments: every bad value is refused in one line, exit 2, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from avprep import cli_options
from avprep.config import SPEC_PRESETS, ShardConfig
from avprep.synth import make_demo_video
from avprep.units import parse_size


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
    "unknown decoder": ["--decoder", "opencv"],
    "jpeg quality": ["--jpeg-quality", "101"],
    "size without a number": ["--shard-max-bytes", "G"],
    "size in an unknown unit": ["--shard-max-bytes", "1X"],
    "negative size": ["--shard-max-bytes", "-1G"],
    "size under a MiB": ["--shard-max-bytes", "1M"],  # 10^6 < 2^20: M is decimal
    "input is a URL": ["s3://bucket/video.mp4"],
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


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_workers_default_to_the_cpus_this_process_may_use():
    """Under ``taskset -c 0`` (as under a Slurm allocation of one CPU) the default is one
    worker, whatever the machine's core count."""
    code = "from avprep.config import ShardConfig; print(ShardConfig(out_dir='unused').workers)"
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.strip() == "1"
    assert ShardConfig(out_dir="unused").workers == len(os.sched_getaffinity(0))


def test_sizes_take_decimal_and_binary_units():
    sizes = {"1000000": 10**6, "1G": 10**9, "256M": 256 * 10**6, "256MB": 256 * 10**6,
             "1.5GiB": 3 * 2**29, "256MiB": 2**28, "2 kib": 2048, ".5K": 500, "1TiB": 2**40}  # fmt: skip
    assert {text: parse_size(text) for text in sizes} == sizes
    for bad in ("", "G", "1X", "1iB", "-1", "1e9", "nan", "inf", "1.2.3", "1 G B"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_a_size_with_units_shards(clips, tmp_path):
    run_cli("shard", str(clips[0]), "--out", str(tmp_path / "out"), "--shard-max-bytes", "1.5GiB",
            "--quiet")  # fmt: skip
    assert len(list((tmp_path / "out").glob("*.tar"))) == 1


def test_cli_choices_are_the_libraries_names():
    """The CLI lists choices without importing numpy or torch; these are the names the
    libraries define."""
    from cmac_core.config import METHODS
    from cmac_core.evaluate.arms import ARMS
    from cmac_core.evaluate.config import PRESETS

    assert cli_options.SPEC_PRESETS == SPEC_PRESETS
    assert cli_options.METHODS == METHODS
    assert cli_options.EVALUATE_SIZES == PRESETS
    assert tuple(a.name for a in ARMS) == cli_options.ARMS


HEAVY = ("torch", "av", "pyarrow", "numpy")
WRONG_CHOICES = {
    "--spec-preset": (["shard", "{tmp}", "--out", "{tmp}/out", "--spec-preset", "mfcc"],
                      "'mfcc' is not one of logmel128, vggish64"),
    "--decoder": (["shard", "{tmp}", "--out", "{tmp}/out", "--decoder", "opencv"],
                  "'opencv' is not one of auto, pyav, decord, ffmpeg"),
    "--method": (["pretrain", "{tmp}", "--out", "{tmp}/out", "--method", "simclr"],
                 "'simclr' is not one of cmac, avid, lla"),
    "--device": (["embed", "{tmp}", "--ckpt", "{tmp}/c.pt", "--out", "{tmp}/out", "--device", "gpu"],
                 "'gpu' is not one of auto, cpu, cuda, cuda:N"),
    "--config": (["evaluate", "{tmp}/out", "--config", "huge"], "'huge' is not one of auto, tiny, base"),
    "--arms": (["evaluate", "{tmp}/out", "--arms", "cmac,simclr"], "unknown arm 'simclr'; choose from"),
}  # fmt: skip


@pytest.mark.parametrize("option", list(WRONG_CHOICES))
def test_a_wrong_choice_is_one_line_before_any_heavy_import(option, tmp_path):
    args, message = WRONG_CHOICES[option]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = (f"import sys\nfrom avprep.cli import main\nsys.argv = ['avprep', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["exit 2", "[]"], proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"avprep: error: Invalid value for '{option}': ")
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


URL_ARGS = {  # avprep shard takes URLs (tests/test_remote.py)
    "inspect --png": ["inspect", "{tmp}", "--png", "s3://bucket/sheet.png"],
    "synth": ["synth", "s3://bucket/bench"],
    "evaluate": ["evaluate", "s3://bucket/eval"],
    "evaluate --report": ["evaluate", "out", "--report", "https://host/report"],
    "demo": ["demo", "--out", "s3://bucket/demo"],
    "pretrain --out": ["pretrain", "pipe:cat {tmp}/a.tar", "--out", "s3://bucket/run"],
    "embed --ckpt": ["embed", "http://host/shard-{0..3}.tar", "--ckpt", "s3://b/last.pt", "--out", "e"],
    "embed --attention-maps": ["embed", "{tmp}", "--ckpt", "c.pt", "--out", "e",
                               "--attention-maps", "s3://bucket/maps"],
    "localize --out": ["localize", "{tmp}", "--ckpt", "c.pt", "--out", "gs://bucket/maps"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(URL_ARGS))
def test_a_url_where_a_local_path_is_needed_is_refused(case, tmp_path):
    """Until remote storage exists: one line naming the scheme, exit 2, nothing made (run in
    an empty folder, where ``s3://b/x`` would have become the folder ``s3:/b/x``). SHARDS
    to read stay URLs webdataset opens (``pipe:``, ``http://``): the error is the output's."""
    work = tmp_path / "work"
    work.mkdir()
    args = [a.replace("{tmp}", str(tmp_path / "none")) for a in URL_ARGS[case]]
    in_work = ["sh", "-c", 'cd "$0" && exec "$@"', str(work)]
    proc = run_cli(*args, check=False, prefix=in_work, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "remote storage (" in lines[0], proc.stderr
    assert "is not supported yet" in lines[0]
    assert list(work.iterdir()) == [] and list(tmp_path.iterdir()) == [work]


def test_the_library_refuses_a_read_only_url_out_dir_too(tmp_path, monkeypatch):
    """``ShardConfig(out_dir="https://...")`` from Python: one line, no folder made (an
    s3:// out_dir is written: tests/test_remote.py)."""
    from avprep.config import ShardConfig
    from avprep.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"^--out cannot be an https:// URL \(read only\)"):
        ShardConfig(out_dir="https://host/x")
    assert list(tmp_path.iterdir()) == []
