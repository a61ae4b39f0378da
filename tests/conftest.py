"""Shared test helpers: real ffmpeg media, real CLI runs, real tar shards."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from avprep import schema

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
    pytest.exit("ffmpeg/ffprobe are required for the tests: run scripts/test", returncode=2)


def real_clip(name: str) -> Path:
    """A clip from ../shared/data/real, or skip where it is absent (a user's clone)."""
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"real clip {name} not available")
    return path


def run_cli(*args: str, check: bool = True, timeout: float = 600, env: dict | None = None,
            prefix: list[str] | None = None):  # fmt: skip
    """Run ``python -m avprep ARGS`` as a user would; returns CompletedProcess.

    ``prefix``: a command to run it under (``on_small_disk``, ``on_read_only``)."""
    full_env = {**os.environ, **(env or {})}
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID"):
        if env is None or var not in env:
            full_env.pop(var, None)
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "avprep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"avprep {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def kill_when(args: list[str], ready, *, env: dict | None = None, timeout: float = 300) -> None:
    """Start ``args`` in its own session, wait until ``ready()`` holds (or it exits, or
    ``timeout``), then SIGKILL its whole process group and reap it."""
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def shard_workers(pid: int) -> list[int]:
    """The shard worker processes of the avprep process ``pid``: its multiprocessing
    children or grandchildren (forked by its forkserver) that lead their own process
    group, as every worker does once started."""
    stats = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if b"multiprocessing" in (proc / "cmdline").read_bytes():
                stats[int(proc.name)] = (int(fields[1]), int(fields[2]))  # parent, group
        except (OSError, IndexError, ValueError):
            continue
    ours = {k for k, (parent, _) in stats.items() if parent == pid}
    ours |= {k for k, (parent, _) in stats.items() if parent in ours}
    return sorted(k for k in ours if stats[k][1] == k)


def _private_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def on_small_disk(folder: Path, size_kb: int) -> list[str]:
    """A command prefix that runs the command with a fresh ``size_kb`` tmpfs mounted at
    ``folder`` (created), in a private mount namespace (``unshare -rm``): a full disk
    for real, nothing mounted outside the command. Skips where that is not allowed."""
    if not _private_mounts():
        pytest.skip("private mount namespaces (unshare -rm) are not allowed here")
    Path(folder).mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size="$1"k,mode=0777 tmpfs "$0" && shift && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, str(folder), str(size_kb)]


def on_read_only(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` (existing, with what it holds) is read-only
    (a read-only bind mount in a private mount namespace). Skips where not allowed."""
    if not _private_mounts():
        pytest.skip("private mount namespaces (unshare -rm) are not allowed here")
    Path(folder).mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, str(folder)]


def samples_of(path: Path) -> dict[str, dict[str, bytes]]:
    """A shard's members by sample, raw: key -> {suffix: bytes}, in shard order."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, suffix = m.name.partition(".")
            out.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return out


def write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """A shard of ``samples`` (``samples_of``'s shape) as avprep writes tar members."""
    from avprep.writer import tar_member

    with open(path, "wb") as f:
        for key, members in samples.items():
            for suffix, data in members.items():
                f.write(tar_member(f"{key}.{suffix}", data))
        f.write(b"\0" * 1024)
    return path


def read_shards(out_dir: Path) -> dict[str, dict]:
    """Every sample of every committed shard: key -> {json, frames, spec, flac, shard}."""
    samples: dict[str, dict] = defaultdict(lambda: {"frames": {}})
    seen_keys: list[str] = []
    for tar_path in sorted(Path(out_dir).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, suffix = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                s = samples[key]
                s["shard"] = tar_path.name
                if suffix == "json":
                    s["json"] = schema.readers_meta(json.loads(data))  # v2: media, extra parsed
                    seen_keys.append(key)
                elif suffix == "spec.npy":
                    s["spec"] = np.load(io.BytesIO(data), allow_pickle=False)
                elif suffix.endswith(".jpg"):  # schema v1: a member per frame
                    s["frames"][int(suffix[1:4])] = data
                elif suffix == "jpgs":  # v2: the frames in one member, at the json's offsets
                    off = s["json"]["frame_offsets"]
                    s["frames"].update((i, data[off[i] : off[i + 1]]) for i in range(len(off) - 1))
                elif suffix == "flac":
                    s["flac"] = data
    assert len(seen_keys) == len(set(seen_keys)), "a sample key appears twice across shards"
    return dict(samples)


def decode_frames(sample: dict) -> np.ndarray:
    import simplejpeg

    return np.stack([simplejpeg.decode_jpeg(sample["frames"][i]) for i in sorted(sample["frames"])])


def read_manifest(out_dir: Path):
    import pyarrow.dataset as ds

    return ds.dataset(str(Path(out_dir) / "manifest"), format="parquet").to_table()


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """Six short synthetic videos (moving squares with tones) sharded into several shards."""
    from avprep.demo import make_demo_videos

    root = tmp_path_factory.mktemp("demo")
    make_demo_videos(root / "videos", 6, duration_s=6.0)
    out = root / "shards"
    run_cli("shard", str(root / "videos"), "--out", str(out), "--segment-seconds", "2",
            "--shard-max-samples", "4", "--workers", "2", "--quiet")  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(demo_shards, tmp_path_factory) -> Path:
    """A tiny CMAC checkpoint: a few CPU steps on the demo shards."""
    run = tmp_path_factory.mktemp("tiny-run")
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "4",
            env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    return run / "last.pt"


def make_clips(folder: Path, n: int, duration_s: float) -> list[Path]:
    """``n`` small demo videos (96x64, each its own tone and colour) in ``folder``."""
    from avprep.synth import make_demo_video

    folder.mkdir(parents=True, exist_ok=True)
    colors = ("orange", "blue", "green", "red", "white", "yellow")
    return [
        make_demo_video(
            folder / f"clip{i:02d}.mp4",
            duration_s=duration_s,
            size=(96, 64),
            tone_hz=300 + 50 * i,
            color=colors[i % len(colors)],
        )  # fmt: skip
        for i in range(n)
    ]


def processes_with(text: str) -> list[str]:
    """Command lines of running processes that mention ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if text.encode() in args:
            found.append(" ".join(a.decode(errors="replace") for a in args))
    return found
