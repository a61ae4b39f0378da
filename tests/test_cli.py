"""The command line as a person meets it: help, missing ffmpeg, entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import typer
from conftest import run_cli

import avprep
from avprep.cli_messages import one_line_errors
from cmac_core.errors import CmacError


def test_help_imports_nothing_heavy():
    code = (
        "import sys, avprep.cli, avprep.cli_app\n"
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


def test_without_ffmpeg_the_ffmpeg_decoder_says_so_in_one_line(tmp_path):
    """The default decoder (PyAV) needs no system ffmpeg (tests/test_media.py shards with an
    empty PATH); the ffmpeg pipe asked for by name does, and says so."""
    (tmp_path / "in").mkdir()
    env = {"PATH": str(tmp_path / "empty-bin")}  # python is run by absolute path
    proc = run_cli("shard", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                   "--decoder", "ffmpeg", check=False, env=env)  # fmt: skip
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
    assert (out / "embeddings.videos.parquet").exists()  # beside the table, not in it
    page = (out / "localize" / "index.html").read_text()
    assert page.count("<figure>") == len(list((out / "localize").glob("*[0-9].npy"))) == 4
    again = run_cli(
        "demo", "--out", str(out), "--videos", "2", "--steps", "3", env={"OMP_NUM_THREADS": "1"}
    )
    assert (
        "already complete" in again.stdout
        and "0 segment embeddings (4 already there)" in again.stdout
    )


def test_version_prints_the_package_version():
    proc = run_cli("--version")
    assert proc.stdout == f"avprep {avprep.__version__}\n" and proc.stderr == ""


def test_bare_avprep_prints_help_and_exits_0():
    proc = run_cli()
    assert "Usage: avprep" in proc.stdout and "shard" in proc.stdout
    assert proc.stderr == ""


def test_shell_completion_is_on():
    """typer's --install-completion/--show-completion, and the completion itself: the
    shell asks with ``_AVPREP_COMPLETE`` set and gets commands and an option's choices."""
    assert "--install-completion" in run_cli("--help").stdout
    env = {"_AVPREP_COMPLETE": "complete_bash", "COMP_CWORD": "3",
           "COMP_WORDS": "avprep shard --spec-preset "}  # fmt: skip
    assert run_cli(env=env).stdout.split() == ["logmel128", "vggish64"]
    env = {"_AVPREP_COMPLETE": "complete_bash", "COMP_CWORD": "1", "COMP_WORDS": "avprep sh"}
    assert run_cli(env=env).stdout.split() == ["shard"]


def test_enumerated_options_list_their_choices_in_help():
    wide = {"TERMINAL_WIDTH": "200"}
    for command, listed in (
        ("shard", ["[logmel128|vggish64]", "[auto|pyav|decord|ffmpeg]"]),
        ("pretrain", ["[cmac|avid|lla]", "[auto|cpu|cuda|cuda:N]"]),
        ("embed", ["[auto|cpu|cuda|cuda:N]"]),
        ("localize", ["[auto|cpu|cuda|cuda:N]"]),
        ("evaluate", ["[auto|tiny|base]", "[auto|cpu|cuda|cuda:N]", "random_init"]),
    ):
        text = run_cli(command, "--help", env=wide).stdout
        for choices in listed:
            assert choices in text, (command, choices)


def test_a_missing_torch_is_one_line_naming_the_extra(tmp_path):
    """Each training command run where torch cannot be imported (blocked in sys.modules
    in a real subprocess) says which extra installs it, and creates nothing."""
    shards, out = str(tmp_path / "shards"), str(tmp_path / "out")
    for argv in (["pretrain", shards, "--out", out, "--config", "tiny"],
                 ["embed", shards, "--ckpt", str(tmp_path / "c.pt"), "--out", out],
                 ["localize", shards, "--ckpt", str(tmp_path / "c.pt"), "--out", out],
                 ["evaluate", out, "--quick"],
                 ["demo", "--out", out]):  # fmt: skip
        code = ("import sys\nsys.modules['torch'] = None\nfrom avprep.cli import main\n"
                f"sys.argv = ['avprep', *{argv!r}]\nmain()\n")  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.splitlines() == [
            f"avprep: error: avprep {argv[0]} needs torch: pip install 'avprep[train]'"
        ]
        assert list(tmp_path.iterdir()) == [], argv


def test_every_cmac_error_is_one_line_by_type_even_a_new_class(capsys):
    """The CLI knows cmac_core's errors by their base class, not by name: a class written
    after the CLI, raised directly, as the cause of another error, or from a data-loader
    worker (its traceback in the message), is one line and exit 2; a bug is not."""

    class BrandNewError(CmacError):
        pass

    def from_worker():
        try:
            raise BrandNewError("Traceback (most recent call last):\n  File ...\n"
                                "shards.BrandNewError: the shards are odd")  # fmt: skip
        except BrandNewError as e:
            raise RuntimeError("DataLoader worker (pid 7) failed") from e

    def chained():
        raise RuntimeError("wrapped") from BrandNewError("the shards are odd")

    def direct():
        raise BrandNewError("the shards are odd")

    for raise_it in (direct, chained, from_worker):
        with pytest.raises(typer.Exit) as exit_info, one_line_errors():
            raise_it()
        assert exit_info.value.exit_code == 2
        assert capsys.readouterr().err == "avprep: error: the shards are odd\n", raise_it
    with pytest.raises(ValueError, match="a bug"), one_line_errors():
        raise ValueError("a bug")
