"""Inputs that hang the decoder: each is failed ``timeout`` within --timeout, the worker
stuck on it is replaced with its ffmpegs, and the run goes on."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import make_clips, processes_with, read_manifest, read_shards, run_cli

from avprep.config import ShardConfig
from avprep.pipeline import shard_videos

SHARD = ("--segment-seconds", "2", "--quiet")


def _serve_once(fifo: Path, data: bytes, *, release: threading.Event | None = None
                ) -> tuple[threading.Thread, threading.Event]:  # fmt: skip
    """Feed ``data`` to the first reader of ``fifo``; later readers wait forever. With
    ``release``, the pipe is then held open, without another byte, until it is set: the
    reader blocks part way through. Returns the thread and an event set once fed."""
    fed = threading.Event()

    def run() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(data)
                f.flush()
                fed.set()
                if release is not None:
                    release.wait()
        except BrokenPipeError:
            fed.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, fed


@pytest.mark.parametrize("decoder", ["auto", "ffmpeg"])
def test_hanging_inputs_time_out_and_the_run_goes_on(decoder, tmp_path):
    """A FIFO nobody writes hangs the opening (PyAV's in the worker, or ffprobe). Another
    hangs the decoding: fed half a file and then nothing more (PyAV reads it once, and
    blocks mid-file), or, for the ffmpeg pipe, fed once (ffprobe reads it, and the
    ffmpeg decoding it waits for a writer).

    Both are failed ``timeout`` within --timeout; the worker stuck on the decoder
    is replaced (with any ffmpeg it started: no process is left behind) and the
    videos it had finished but not committed are redone.
    """
    clips = make_clips(tmp_path / "in", 3, duration_s=3.0)
    hang_probe = tmp_path / "hang.mp4"
    hang_decode = tmp_path / "hang decode.ts"
    os.mkfifo(hang_probe)
    os.mkfifo(hang_decode)
    ts = tmp_path / "clip.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clips[0]), "-c", "copy", str(ts)],
                   check=True)  # fmt: skip
    data = ts.read_bytes()
    release = None if decoder == "ffmpeg" else threading.Event()
    feeder, fed = _serve_once(hang_decode, data if release is None else data[: len(data) // 2],
                              release=release)  # fmt: skip
    inputs = [str(clips[0]), str(hang_probe), str(clips[1]), str(hang_decode), str(clips[2])]
    cfg = ShardConfig(out_dir=str(tmp_path / "out"), segment_seconds=2.0, workers=1,
                      timeout_seconds=8.0, quiet=True, decoder=decoder)  # fmt: skip
    t0 = time.monotonic()
    try:
        report = shard_videos(inputs, cfg)
    finally:
        if release is not None:
            release.set()
    elapsed = time.monotonic() - t0
    feeder.join(timeout=5)
    assert fed.is_set(), "the decoder-hang FIFO was never read"
    rows = {r["source"]: r for r in read_manifest(tmp_path / "out").to_pylist()}
    assert set(rows) == set(inputs)
    for hang in (hang_probe, hang_decode):
        assert (rows[str(hang)]["status"], rows[str(hang)]["reason"]) == ("failed", "timeout")
    for clip in clips:
        assert rows[str(clip)]["status"] == "ok", rows[str(clip)]
    assert report.exit_code(strict=False) == 0 and report.exit_code(strict=True) == 1
    assert report.counts == {"ok": 3, "failed": 2} and report.reasons == {"timeout": 2}
    assert report.n_segments == 6 == len(read_shards(tmp_path / "out"))
    assert not report.unaccounted
    assert elapsed < 120
    assert list((tmp_path / "out").rglob("*.tmp")) == []
    time.sleep(0.5)
    assert processes_with(str(hang_decode)) == []  # no ffmpeg left waiting on the FIFO
    assert processes_with(str(hang_probe)) == []


def test_timeout_from_the_command_line(tmp_path):
    """--timeout 3 with a FIFO in a csv manifest: exit 0, the FIFO failed, the clips ok."""
    make_clips(tmp_path / "in", 2, duration_s=2.0)
    os.mkfifo(tmp_path / "in" / "hang.mp4")
    m = tmp_path / "list.csv"
    m.write_text("path\n" + "".join(f"in/{n}\n" for n in ("clip00.mp4", "hang.mp4", "clip01.mp4")))
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = run_cli("shard", str(m), "--out", str(out), "--timeout", "3", "--workers", "2",
                   *SHARD, timeout=120)  # fmt: skip
    assert proc.returncode == 0
    assert time.monotonic() - t0 < 90
    rows = {r["source"]: (r["status"], r["reason"]) for r in read_manifest(out).to_pylist()}
    assert rows == {
        "in/clip00.mp4": ("ok", None),
        "in/hang.mp4": ("failed", "timeout"),
        "in/clip01.mp4": ("ok", None),
    }
