"""``avprep shard`` against the decode-only bound, on the same inputs and worker counts.

    python benchmarks/bench_shard.py [--data DIR] [--json PATH] [--workers 1,2] [--repeats 3]

Inputs are made once with ffmpeg and cached in ``--data``: ``--clips`` videos of
``--clip-seconds`` at ``--size`` (default 640x360), 25 fps, H.264 (x264 veryfast, CRF 23, 5 s GOP with
B-frames) + stereo AAC, whose picture (ffmpeg's testsrc2 with temporal grain)
changes every frame and compresses to about 1.1 Mbit/s, like web video at this
size; and one ``--long-seconds`` video of the same kind for the memory check.

For each worker count N, in one run on the same files:

- decode-only bound: ``ffmpeg -threads 1 -i X -map 0:v:0 -f null -`` per file,
  N files at a time;
- decode+resize, a second reference: the same with
  ``-vf fps=16,scale=-2:128,format=rgb24``, the least avprep must do to frames;
- "<decoder> frames", a third: avprep's own frame reader of the first of
  ``--decoders`` alone, as a worker opens it, reading every 10 s segment's 16 fps
  frames, in N processes that imported it once. For PyAV (``auto``, ``pyav``) that is
  the container opened and its frames decoded (the frames no output time shows left
  undecoded where the codec allows, as in a worker), selected and scaled (``PyavFrames``,
  one thread); for decord ``DecordFrames`` (resized while decoding, the worker's
  thread count), each file probed beforehand outside the timing. Nothing is encoded
  or written: it is the floor of ``avprep shard`` with that decoder. With
  ``--container ts`` the clips are remuxed to MPEG-TS (decord then hands them to
  its ffmpeg pipe, and the decord reference is that pipe, "ffmpeg frames");
- ``avprep shard CLIPS --out TMP --workers N --quiet --decoder D`` (the console script) for
  each D of ``--decoders`` (default ``auto``: PyAV), with its defaults (16 fps,
  short side 128, 10 s segments, logmel128), process start-up included;
- start-up: the same command on N clips of 1 s with N workers (almost nothing but
  process start, imports, the manifest and the end), and the shard / decode-only ratio
  with that taken out of the best shard run: what a long job tends to.

``--inputs FILE...`` times given videos (the real clips in ``../shared/data/real``)
instead, each copied ``--copies`` times.

Throughput is seconds of video per wall second. Runs are interleaved (the
three commands for each N, ``--repeats`` times) and each waits until
the machine is idle (other processes using under ``--idle-below`` cores, for at
most ``--max-wait`` seconds), because on a small shared machine other work
changes wall times by 2x; the CPU load of other processes during each run is
recorded. The table shows the best run (least disturbed) and the median; CPU
is user + system seconds of the benchmarked processes per second of video, and
the CPU ratio (reference CPU / shard CPU) is what the throughput ratio tends
to when every core is busy. Peak RSS is polled from /proc (VmHWM of each process
of the ``avprep shard`` tree, its private part RssAnon, and the largest sum of
VmRSS over the tree at one moment) during a ``--workers 1`` run on the clips
and one on the long video. The benchmark measures; it never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from common import REPO, commit, cpu_model  # benchmarks/: the script's folder is on sys.path
from inputs import (
    SIZE,
    bit_rate,
    copy_inputs,
    duration_s,
    make_inputs,
    make_tiny,
    remux_ts,
)
from proctree import TreeRSS, children
from shard_report import KIND_LABELS, REFS, print_report, ratio


# -- measuring ---------------------------------------------------------------
def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for descendants."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux): the shard
    workers' forkserver outlives the command by a moment, and its CPU (with its
    workers', which it waits for) counts in ours only once we wait for it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(ours: set[int]) -> None:
    """Wait for the children we did not start ourselves (not in ``ours``): the processes a
    finished command left to us (``adopt_orphans``), its workers' forkserver and its
    resource tracker, which exit once they see it gone."""
    for pid in set(children(os.getpid())) - ours:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(*, below_cores: float, max_wait_s: float) -> float:
    """Wait until other processes use under ``below_cores`` for 2 s; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        b0 = machine_busy_s()
        time.sleep(2.0)
        if (machine_busy_s() - b0) / 2.0 < below_cores:
            break
    return time.monotonic() - t0


class Meter:
    """Wall seconds, our CPU seconds and other processes' load (cores) over a block.

    ``cpu_s`` counts this process and the children it waited for; CPU spent in
    processes it did not wait for (a pool's) is added with ``add_cpu`` before
    ``as_dict``, so that it is not counted as other processes' load.
    """

    def __enter__(self) -> Meter:
        self.t0, self.cpu0, self.busy0 = time.perf_counter(), own_cpu_s(), machine_busy_s()
        self.t_done: float | None = None
        return self

    def done(self) -> None:
        """The command returned (what its user waits for): ``wall_s`` ends here, while CPU
        and load count to the end of the block (its leftovers exiting)."""
        self.t_done = time.perf_counter()

    def __exit__(self, *exc) -> None:
        end = time.perf_counter()
        self.span_s = end - self.t0
        self.wall_s = (self.t_done or end) - self.t0
        self.cpu_s = own_cpu_s() - self.cpu0
        self.busy_s = machine_busy_s() - self.busy0

    def add_cpu(self, seconds: float) -> None:
        self.cpu_s += seconds

    def as_dict(self) -> dict:
        other_cores = max(0.0, (self.busy_s - self.cpu_s) / self.span_s)
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "other_cores": other_cores}


def decode_bound(files: list[Path], workers: int, *, resize: bool = False) -> dict:
    """Wall and CPU seconds of decoding every file's video, ``workers`` files at a time.

    With ``resize``, also what avprep must at least do to the frames: keep 16 per
    second and scale them to a 128 px short side in RGB.
    """
    vf = ["-vf", "fps=16,scale=-2:128,format=rgb24"] if resize else []

    def decode(path: Path) -> None:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(path),
               "-map", "0:v:0", *vf, "-f", "null", "-"]  # fmt: skip
        subprocess.run(cmd, check=True)

    with Meter() as m, ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, files))
    return m.as_dict()


def resize_bound(files: list[Path], workers: int) -> dict:
    return decode_bound(files, workers, resize=True)


def _import_decoders() -> None:
    import avprep.decode  # noqa: F401, PLC0415
    import avprep.media.frames  # noqa: F401, PLC0415

    with contextlib.suppress(ImportError):  # decord is an optional extra
        import decord  # noqa: F401, PLC0415


def _decoder_frames(path: str, info, threads: int, decoder: str) -> float:
    """Read every segment's frames of one file as an avprep worker does; the CPU seconds."""
    c0 = own_cpu_s()  # this process (all its threads) and its ffmpeg, once waited for
    from avprep.config import ShardConfig  # noqa: PLC0415  (in the pool's processes)
    from avprep.decode import open_frames  # noqa: PLC0415

    cfg = ShardConfig(out_dir=Path("unused"))
    container = None
    if decoder == "pyav":
        from avprep.media.container import Container  # noqa: PLC0415
        from avprep.media.frames import PyavFrames  # noqa: PLC0415
        from avprep.media.unshown import SegmentGrid  # noqa: PLC0415

        container = Container(path)
        grid = SegmentGrid(cfg.fps, cfg.segment_seconds)  # as a worker: unshown frames skipped
        frames = PyavFrames(container, short_side_px=cfg.short_side_px, grid=grid)
    else:
        frames = open_frames(
            path, info, short_side_px=cfg.short_side_px, threads=threads, decoder=decoder
        )
    n, start = 0, 0.0
    while start < frames.end_s:
        n += len(frames.read(start, start + cfg.segment_seconds, cfg.fps))
        start += cfg.segment_seconds
    frames.close()
    if container is not None:
        container.close()
    if n == 0:
        raise RuntimeError(f"{decoder} read no frames from {path}")
    return own_cpu_s() - c0


def frames_bound(files: list[Path], workers: int, decoder: str) -> dict:
    """Wall and CPU seconds of avprep's frame decoder alone over every file, N processes:
    PyAV's, or decord for MP4 and the ffmpeg pipe for MPEG-TS (as avprep picks)."""
    from avprep.probe import probe  # noqa: PLC0415

    infos = [probe(str(f), timeout_s=60) for f in files]  # outside the timing
    threads = max(1, (os.cpu_count() or 1) // workers)  # as avprep.worker does
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_import_decoders) as pool:  # started, decoders imported
        pool.map(time.sleep, [0.5] * workers)  # every process is up before timing starts
        with Meter() as m:
            task_cpu = pool.starmap(
                _decoder_frames,
                [(str(f), info, threads, decoder) for f, info in zip(files, infos, strict=True)],
                chunksize=1,
            )
        m.add_cpu(sum(task_cpu))
    return m.as_dict()


def frames_decoder(files: list[Path], decoder: str) -> str:
    """The frame reader avprep uses for these files with ``--decoder decoder``."""
    if decoder in ("auto", "pyav"):
        return "pyav"
    return "ffmpeg" if decoder == "ffmpeg" or files[0].suffix == ".ts" else "decord"


def avprep_command() -> list[str]:
    """The ``avprep`` command users run: the environment's console script (whose workers
    run it again as their main script, unlike ``python -m avprep``'s), else ``-m``."""
    script = Path(sys.executable).parent / "avprep"
    return [str(script)] if script.exists() else [sys.executable, "-m", "avprep"]


def shard_run(folder: Path, workers: int, decoder: str = "auto") -> dict:
    """Wall and CPU seconds and peak RSS of one ``avprep shard`` run into a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="avprep-bench-out-"))
    cmd = [*avprep_command(), "shard", str(folder), "--out", str(out),
           "--workers", str(workers), "--quiet", "--decoder", decoder]  # fmt: skip
    try:
        ours = set(children(os.getpid()))
        with Meter() as m:
            proc = subprocess.Popen(cmd, cwd=REPO)
            rss = TreeRSS(proc.pid)
            rc = proc.wait()
            m.done()
            reap_orphans(ours)  # the forkserver, with its workers' CPU
            rss.stop()
        if rc != 0:
            raise RuntimeError(f"avprep shard exited {rc}: {' '.join(cmd)}")
        n_bytes = sum(p.stat().st_size for p in out.glob("*.tar"))
        return {
            **m.as_dict(),
            "peak_rss_bytes": rss.peak_by_role,
            "peak_anon_bytes": rss.anon_by_role,
            "peak_tree_rss_bytes": rss.peak_total,
            "shard_bytes": n_bytes,
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def summarize(runs: list[dict], video_s: float) -> dict:
    """Best (fastest) and median run of one configuration."""
    best = min(runs, key=lambda r: r["wall_s"])
    wall = statistics.median(r["wall_s"] for r in runs)
    return {
        "best_video_s_per_s": video_s / best["wall_s"],
        "median_video_s_per_s": video_s / wall,
        "cpu_s_per_video_s": statistics.median(r["cpu_s"] for r in runs) / video_s,
        "runs": [{k: round(r[k], 3) for k in ("wall_s", "cpu_s", "other_cores")} for r in runs],
    }


# -- report ------------------------------------------------------------------
def machine() -> dict:
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    versions = {}
    for dist in ("av", "decord", "torch", "torchaudio", "simplejpeg", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "packages": versions,
        "ffmpeg": ffmpeg.split(" Copyright", 1)[0],
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main() -> None:
    adopt_orphans()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "avprep-bench-data")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--workers", default="1,2", help="Comma-separated worker counts.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--clip-seconds", type=float, default=60.0)
    ap.add_argument("--long-seconds", type=float, default=600.0)
    ap.add_argument(
        "--inputs",
        type=Path,
        nargs="+",
        default=None,
        help="Time these videos (e.g. the real clips) instead of made ones, each copied "
        "--copies times; the long video for the memory check is still made.",
    )
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", help="WxH of the inputs.")
    ap.add_argument(
        "--container",
        choices=("mp4", "ts"),
        default="mp4",
        help="ts: the clips remuxed to MPEG-TS, so avprep decodes them with its ffmpeg pipe.",
    )
    ap.add_argument(
        "--decoders",
        default="auto",
        help="Comma-separated --decoder values for avprep shard (the first also names the "
        "frames reference), e.g. auto,decord for the new engine beside the old.",
    )
    ap.add_argument("--idle-below", type=float, default=0.2, help="Cores; see the doc.")
    ap.add_argument("--max-wait", type=float, default=15.0, help="Seconds; see the doc.")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    size = tuple(int(x) for x in args.size.lower().split("x"))

    clip_dir, long_dir = make_inputs(
        args.data, clips=args.clips, clip_s=args.clip_seconds, long_s=args.long_seconds, size=size
    )
    if args.inputs:
        clip_dir = copy_inputs(args.data, args.inputs, args.copies)
    if args.container == "ts":
        clip_dir = remux_ts(clip_dir)
    files = sorted(p for p in clip_dir.iterdir() if not p.name.startswith("."))
    decoders = args.decoders.split(",")
    frames_reader = frames_decoder(files, decoders[0])
    KIND_LABELS["frames"] = f"{frames_reader} frames"
    KIND_LABELS["shard"] = f"avprep shard ({decoders[0]})"
    for d in decoders[1:]:
        KIND_LABELS[f"shard_{d}"] = f"avprep shard ({d})"
    video_s = sum(duration_s(f) for f in files)
    res = {
        "machine": machine(),
        "repeats": args.repeats,
        "decoders": decoders,
        "inputs": {
            "clips": len(files),
            "clip_seconds": video_s / len(files) if args.inputs else args.clip_seconds,
            "given": [str(f) for f in args.inputs or []],
            "video_seconds": round(video_s, 3),
            "size": f"{size[0]}x{size[1]}",
            "mbit_per_s": statistics.mean(bit_rate(f) for f in files) / 1e6,
            "long_seconds": round(duration_s(long_dir / "long.mp4"), 3),
        },
    }

    def measure(label: str, fn, *a) -> dict:
        waited = wait_until_idle(below_cores=args.idle_below, max_wait_s=args.max_wait)
        r = fn(*a)
        print(
            f"  {label:<22}: {r['wall_s']:6.1f} s wall, {r['cpu_s']:6.1f} s CPU, "
            f"others {r['other_cores']:.2f} cores (waited {waited:.0f} s for idle)",
            file=sys.stderr,
        )
        return r

    kinds = {
        "decode_only": (decode_bound, files),
        "decode_resize": (resize_bound, files),
        "frames": (frames_bound, files, frames_reader),
        "shard": (shard_run, clip_dir, decoders[0]),
        **{f"shard_{d}": (shard_run, clip_dir, d) for d in decoders[1:]},
    }
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):  # interleaved, so drift hits all alike
        for n in workers:
            print(f"run {rep + 1}/{args.repeats}, {n} workers", file=sys.stderr)
            for kind, (fn, what, *rest) in kinds.items():
                r = measure(KIND_LABELS[kind], fn, what, n, *rest)
                runs.setdefault((kind, n), []).append(r)

    res["by_workers"] = []
    res["pairs"] = [("shard", r) for r in REFS] + [("frames", "decode_only")]
    res["pairs"] += [(k, ref) for k in kinds if k.startswith("shard_") for ref in REFS[:2]]
    for n in workers:
        row = {"workers": n, **{k: summarize(runs[(k, n)], video_s) for k in kinds}}
        row["ratios"] = {f"{kind}/{ref}": ratio(row[kind], row[ref]) for kind, ref in res["pairs"]}
        res["by_workers"].append(row)
    base = res["by_workers"][0]
    res["scaling"] = [
        {
            "workers": row["workers"],
            "base": base["workers"],
            **{k: row[k]["best_video_s_per_s"] / base[k]["best_video_s_per_s"] for k in kinds},
        }
        for row in res["by_workers"][1:]
    ]
    # What a run costs whatever its length (process start-up, imports, the manifest, the
    # end): avprep shard on N clips of 1 s with N workers, best of the repeats.
    res["startup"] = {}
    for n in workers:
        tiny = make_tiny(args.data, n, size)
        best = min(
            measure(f"start-up, {n} x 1 s", shard_run, tiny, n, decoders[0])["wall_s"]
            for _ in range(args.repeats)
        )
        row = next(r for r in res["by_workers"] if r["workers"] == n)
        shard_wall = video_s / row["shard"]["best_video_s_per_s"]
        bound_wall = video_s / row["decode_only"]["best_video_s_per_s"]
        res["startup"][n] = {
            "wall_s": best,
            "shard_wall_s": shard_wall,
            "decode_only_wall_s": bound_wall,
            "ratio_without_startup": bound_wall / (shard_wall - best),
        }
    if 1 in workers:
        last = runs[("shard", 1)][-1]
        res["memory_clips"] = {
            "input": f"{len(files)} x {res['inputs']['clip_seconds']:g} s",
            "workers": 1,
            "peak_rss_bytes": last["peak_rss_bytes"],
            "peak_anon_bytes": last["peak_anon_bytes"],
            "peak_tree_rss_bytes": last["peak_tree_rss_bytes"],
        }
    print(f"memory: {res['inputs']['long_seconds']:.0f} s video, 1 worker", file=sys.stderr)
    long = measure(KIND_LABELS["shard"], shard_run, long_dir, 1, decoders[0])
    res["memory_long"] = {
        "input": f"{res['inputs']['long_seconds']:.0f} s {res['inputs']['size']}",
        "workers": 1,
        "peak_rss_bytes": long["peak_rss_bytes"],
        "peak_anon_bytes": long["peak_anon_bytes"],
        "peak_tree_rss_bytes": long["peak_tree_rss_bytes"],
        "video_s_per_s": res["inputs"]["long_seconds"] / long["wall_s"],
        "other_cores": long["other_cores"],
    }
    print_report(res)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
