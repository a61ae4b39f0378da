"""avprep shard against hostile and faulty inputs: names that read as ffmpeg protocols,
inputs that block forever, damaged manifest parts, absurd arguments.

Every case runs the real CLI on real media made with ffmpeg; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import decode_frames, read_manifest, read_shards, run_cli

from avprep.config import ShardConfig
from avprep.errors import UsageError

SHARD = ("--segment-seconds", "2", "--workers", "1", "--quiet")


def _colour_clip(path: Path, colour: str, duration_s: float) -> Path:
    """A solid-colour 64x48 clip with a tone; written through ``file:`` so that a name
    such as ``concat:a.mp4|b.mp4`` is a file here too."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"color=c={colour}:s=64x48:r=10:d={duration_s}",
         "-f", "lavfi", "-i", f"sine=f=440:d={duration_s}",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
         "-f", "mp4", f"file:{path}"],
        check=True,
    )  # fmt: skip
    return path


# -- 1. file names that read as ffmpeg protocols -------------------------------


PROTOCOL_NAME = "concat:a.mp4|b.mp4"


@pytest.mark.parametrize("given", ["folder", "relative file", "manifest in the cwd"])
def test_protocol_name_is_decoded_as_itself(given, tmp_path):
    """decord read ``concat:a.mp4|b.mp4`` given as a relative path as the concat protocol:
    a.mp4's 2 s of red were stored under the 4 s blue file's name."""
    src = tmp_path / "src"
    src.mkdir()
    _colour_clip(src / "a.mp4", "red", 2.0)
    _colour_clip(src / "b.mp4", "green", 2.0)
    _colour_clip(src / PROTOCOL_NAME, "blue", 4.0)
    (src / "list.csv").write_text(f"path\n{PROTOCOL_NAME}\n")
    inputs = {"folder": str(src), "relative file": PROTOCOL_NAME,
              "manifest in the cwd": "list.csv"}[given]  # fmt: skip
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "avprep", "shard", inputs, "--out", str(out), *SHARD],
        cwd=src, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in read_manifest(out).to_pylist()}
    row = rows[PROTOCOL_NAME]
    assert row["status"] == "ok", row
    assert row["duration_s"] == pytest.approx(4.0, abs=0.15)  # a.mp4 is 2 s long
    assert row["n_segments"] == 2
    samples = [s for s in read_shards(out).values() if s["json"]["video_id"] == row["video_id"]]
    assert len(samples) == 2
    for s in samples:
        rgb = decode_frames(s).reshape(-1, 3).mean(0)
        assert rgb[2] > 150 and rgb[0] < 80 and rgb[1] < 80, rgb  # blue, not a.mp4's red


# -- 2. no process outlives avprep shard ---------------------------------------


def _session(sid: int) -> dict[int, str]:
    """Live processes of session ``sid`` (zombies left out): pid -> command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
        if int(fields[3]) == sid and fields[0] != "Z" and args:
            found[int(stat.parent.name)] = " ".join([os.path.basename(args[0]), *args[1:]])
    return found


def _wait_for(predicate, what: str, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _opening_a_fifo(sid: int) -> dict[int, str]:
    """Processes of session ``sid`` blocked opening a FIFO nobody writes: pid -> command."""
    found = {}
    for pid, command in _session(sid).items():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner":
                found[pid] = command
    return found


@pytest.mark.parametrize(
    ("given", "sig", "decoder"),
    [("file", signal.SIGTERM, "auto"), ("folder", signal.SIGKILL, "auto"),
     ("folder", signal.SIGKILL, "ffmpeg")],
    ids=["term", "kill", "kill-ffprobe"],
)  # fmt: skip
def test_no_process_outlives_a_stopped_run(given, sig, decoder, tmp_path):
    """A worker (PyAV opens files in-process) or its ffprobe (--decoder ffmpeg) blocked
    opening a FIFO; ffprobe ignores SIGTERM and survived the run's SIGTERM or kill -9
    (its worker died with the run, it did not). Now nothing of the run is left."""
    src = tmp_path / "in"
    src.mkdir()
    fifo = src / "stalled.mp4"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "avprep", "shard", str(src if given == "folder" else fifo),
         "--out", str(tmp_path / "out"), "--workers", "1", "--timeout", "600", "--quiet",
         "--decoder", decoder],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    opener = "ffprobe " if decoder == "ffmpeg" else "python"
    try:
        _wait_for(
            lambda: (
                any(c.startswith(opener) for c in _opening_a_fifo(proc.pid).values())
                or proc.poll() is not None
            ),
            what=f"a process ({opener.strip()}) opening the FIFO",
        )
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
        left = {}
        with contextlib.suppress(AssertionError):
            _wait_for(lambda: not _session(proc.pid), what="the run's processes", timeout_s=10)
        left = _session(proc.pid)
        assert not left, left
        if sig == signal.SIGTERM:  # a clean stop, as after Ctrl-C
            assert proc.returncode == 130, stderr
            assert "Traceback" not in stderr, stderr
            assert not list((tmp_path / "out").glob("*.tar"))
    finally:
        for pid in _session(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- 3. a damaged manifest part ------------------------------------------------


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("three")
    for i, colour in enumerate(("red", "green", "blue")):
        _colour_clip(src / f"clip{i}.mp4", colour, 2.0)
    return src


def _damage(part: Path, how: str) -> None:
    if how == "another schema":
        pq.write_table(pa.table({"video_id": ["x"], "n": [1]}), part)
    elif how == "garbage":
        part.write_bytes(b"PAR1" + os.urandom(300))
    elif how == "another shard's rows":  # right schema, rows of another shard
        others = sorted(p for p in part.parent.glob("shard-*.parquet") if p != part)
        part.write_bytes(others[0].read_bytes())


@pytest.mark.parametrize("how", ["another schema", "garbage", "another shard's rows"])
def test_a_damaged_manifest_part_is_rebuilt_from_its_shard(how, three_clips, tmp_path):
    """A damaged part made the next run shard its videos again: two shards with the same
    keys. Now the part is rebuilt from its tar, with a notice, and nothing is redone."""
    out = tmp_path / "out"
    args = ("shard", str(three_clips), "--out", str(out), "--shard-max-samples", "1",
            "--segment-seconds", "2", "--workers", "1")  # fmt: skip
    run_cli(*args, "--quiet")
    first = {r["video_id"]: r for r in read_manifest(out).to_pylist()}
    parts = sorted((out / "manifest").glob("shard-*.parquet"))
    assert len(parts) == 3
    _damage(parts[1], how)

    inspected = run_cli("inspect", str(out), check=False)  # reads, never repairs
    lines = inspected.stderr.strip().splitlines()
    assert inspected.returncode == 2 and len(lines) == 1, inspected.stderr
    assert lines[0].startswith("avprep: error: ") and str(parts[1]) in lines[0]

    proc = run_cli(*args)
    assert f"{parts[1].name}" in proc.stderr + proc.stdout  # the one-line notice
    samples = read_shards(out)  # asserts no key twice
    assert len(samples) == 3 and len(list(out.glob("*.tar"))) == 3
    rows = read_manifest(out).to_pylist()
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in three_clips.glob("*.mp4"))
    assert {r["video_id"]: (r["status"], r["shards"], r["run"]) for r in rows} == {
        vid: (r["status"], r["shards"], r["run"]) for vid, r in first.items()
    }
    assert run_cli("inspect", str(out)).returncode == 0


def test_damage_that_cannot_be_repaired_is_one_line(three_clips, tmp_path):
    """Another rank's damaged part, and a part whose tar is damaged too: refused in one
    line naming the file, nothing sharded twice."""
    out = tmp_path / "out"
    args = ("shard", str(three_clips), "--out", str(out), "--shard-max-samples", "1",
            "--segment-seconds", "2", "--workers", "1", "--quiet")  # fmt: skip
    run_cli(*args)
    other_rank = out / "manifest" / "shard-r0001-001-w00-00000.parquet"
    other_rank.write_bytes(b"not parquet at all")
    for cmd in (args, ("inspect", str(out))):
        proc = run_cli(*cmd, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("avprep: error: ") and str(other_rank) in lines[0]
    other_rank.unlink()
    tar = sorted(out.glob("*.tar"))[0]
    tar.write_bytes(b"\0" * 100 + b"not a tar")
    _damage(out / "manifest" / f"{tar.stem}.parquet", "garbage")
    proc = run_cli(*args, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("avprep: error: ") and str(tar) in lines[0]
    assert len(list(out.glob("*.tar"))) == 3


# -- 4. manifests with garbage in them -----------------------------------------


MANIFESTS = {  # name -> what its one-line error says
    "huge_field.csv": "line 3: field larger than field limit",
    "deep.jsonl": "line 2: nested too deeply",
    "surrogate.jsonl": "line 1: a lone surrogate escape",
    "nul_path.csv": "row 1: the path holds a NUL character",
    "nul_path.jsonl": "row 1: the path holds a NUL character",
    "cut.parquet": "cut.parquet: ",
}


def _write_manifest(folder: Path, name: str) -> Path:
    path = folder / name
    if name == "huge_field.csv":
        path.write_text("path,label\na.mp4,dog\nb.mp4," + "x" * 10_000_000 + "\n")
    elif name == "deep.jsonl":
        path.write_text('{"path": "a.mp4"}\n{"path": "b.mp4", "x": '
                        + "[" * 100_000 + "]" * 100_000 + "}\n")  # fmt: skip
    elif name == "surrogate.jsonl":
        path.write_text('{"path": "\\ud800.mp4"}\n')
    elif name == "nul_path.csv":
        path.write_text("path\na\0b.mp4\n")
    elif name == "nul_path.jsonl":
        path.write_text('{"path": "a\\u0000b.mp4"}\n')
    elif name == "cut.parquet":
        good = folder / "good.parquet"
        pq.write_table(pa.table({"path": ["a.mp4"] * 100, "label": ["x" * 1000] * 100}), good)
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2] + data[-8:])  # the footer kept
    return path


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_garbage_in_a_manifest_is_one_line(name, tmp_path):
    """A 10 MB csv field (csv.Error), JSON nested 100,000 deep (RecursionError), a NUL or a
    lone surrogate in a path (ValueError, UnicodeEncodeError in discover) were tracebacks."""
    path = _write_manifest(tmp_path, name)
    out = tmp_path / "out"
    proc = run_cli("shard", str(path), "--out", str(out), "--quiet", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("avprep: error: ") and str(path) in lines[0]
    assert MANIFESTS[name] in lines[0], lines[0]
    assert not out.exists()


# -- 5. absurd arguments -------------------------------------------------------


ABSURD = {
    "workers 100000": ["--workers", "100000"],
    "workers 10**40": ["--workers", str(10**40)],
    "short side 100000": ["--short-side", "100000"],
    "fps 1e9": ["--fps", "1e9"],
    "fps inf": ["--fps", "inf"],
    "fps -inf": ["--fps", "-inf"],
    "segment 1e6 s at 0.001 fps": ["--segment-seconds", "1e6", "--fps", "0.001"],
    "segment nan": ["--segment-seconds", "nan"],
    "min seconds nan": ["--min-seconds", "nan"],
    "min seconds inf": ["--min-seconds", "inf"],
    "sample rate 10**12": ["--sample-rate", str(10**12)],
    "sample rate negative": ["--sample-rate", "-16000"],
    "jpeg quality 0": ["--jpeg-quality", "0"],
    "shard samples 10**12": ["--shard-max-samples", str(10**12)],
    "shard samples 0": ["--shard-max-samples", "0"],
    "shard bytes 10**30": ["--shard-max-bytes", str(10**30)],
    "shard bytes negative": ["--shard-max-bytes", "-1"],
    "world size 10**12": ["--world-size", str(10**12)],
    "rank 10**12": ["--rank", str(10**12), "--world-size", "2"],
    "timeout negative": ["--timeout", "-1"],
    "timeout nan": ["--timeout", "nan"],
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_arguments_exit_2_with_one_line(case, three_clips, tmp_path):
    """No upper bound on --workers or --short-side (a typo spawned a process per input or
    made 100000-px frames); every field refuses NaN, infinities, negatives, huge values."""
    out = tmp_path / "out"
    proc = run_cli("shard", str(three_clips), "--out", str(out), *ABSURD[case], check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avprep: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("field", [{"fps": "16"}, {"workers": True}, {"workers": 2.5},
                                   {"timeout_seconds": None}])  # fmt: skip
def test_config_from_python_refuses_wrong_types(field, tmp_path):
    """From Python, a string or None for a number was a TypeError traceback."""
    with pytest.raises(UsageError, match="must be an integer|must be a number"):
        ShardConfig(out_dir=str(tmp_path / "out"), **field)
