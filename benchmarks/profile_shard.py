"""Where the time of ``avprep shard`` goes, on one video, inside one process.

    python benchmarks/profile_shard.py VIDEO [VIDEO...] [--threads 1] [--repeats 3] [--workers 2]

Runs ``avprep.sample.process_video`` (the worker's per-file call) on VIDEO with
a ShardWriter into a temporary folder, with timers wrapped around its parts,
and reports wall seconds and the main thread's CPU seconds per part, this
process's CPU seconds (all its threads, decord's decoding thread included) and
its child processes' CPU seconds (ffprobe, the audio ffmpeg).
Then times what happens before a worker can start (imports) and, as
experiments for changes to avprep (none of avprep is edited here): decord's
thread count, JPEG from YUV planes, a numpy log-mel instead of torchaudio's.
Last, a whole ``avprep shard VIDEO... --workers N`` run with its CPU split by
process and thread (decord's decoding threads apart from each worker's main
thread), sampled from /proc every 10 ms.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from proctree import TreeCPU  # benchmarks/: the script's folder is on sys.path

TIMES: dict[str, float] = defaultdict(float)  # wall seconds
# CPU seconds of the calling thread: decord decodes on a thread of its own, which a
# process-wide clock would bill to whichever part happened to run beside it
CPU: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
            CPU[name] += time.thread_time() - c0
            CALLS[name] += 1

    return wrapper


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def instrument() -> None:
    """Wrap the parts of the worker's path in timers (this process only)."""
    import decord  # noqa: PLC0415

    from avprep import decode, read_sample, sample, writer  # noqa: PLC0415
    from avprep.spectrogram import LogMel  # noqa: PLC0415

    sample.probe = timed("probe (ffprobe)", sample.probe)
    decode.DecordFrames.__init__ = timed("decord open + frame index", decode.DecordFrames.__init__)
    decord.VideoReader.get_batch = timed(
        "decord get_batch (decode + resize + RGB)", decord.VideoReader.get_batch
    )
    decord.nd.NDArray.asnumpy = timed("decord asnumpy + frame selection", decord.nd.NDArray.asnumpy)
    sample.AudioReader.__init__ = timed("audio ffmpeg start", sample.AudioReader.__init__)
    sample.AudioReader.read = timed("audio pipe read (waits on ffmpeg)", sample.AudioReader.read)
    LogMel.__call__ = timed("log-mel (numpy)", LogMel.__call__)
    decode.DecordFrames.encode_jpeg = staticmethod(
        timed("JPEG encode (simplejpeg)", decode.DecordFrames.encode_jpeg)
    )
    read_sample.encode_npy = timed("spectrogram .npy", read_sample.encode_npy)  # what sample_members calls
    writer.ShardWriter.add = timed("tar writing (headers + write)", writer.ShardWriter.add)
    writer.ShardWriter.commit = timed("shard commit (fsync + rename)", writer.ShardWriter.commit)


def profile_once(video: Path, threads: int) -> dict:
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)  # as the worker does
    from avprep.config import ShardConfig  # noqa: PLC0415
    from avprep.discover import discover  # noqa: PLC0415
    from avprep.sample import process_video  # noqa: PLC0415
    from avprep.spectrogram import LogMel  # noqa: PLC0415
    from avprep.writer import ShardWriter  # noqa: PLC0415

    out = Path(tempfile.mkdtemp(prefix="avprep-prof-"))
    cfg = ShardConfig(out_dir=str(out), workers=1)
    inp = discover([str(video)])[0]
    w = ShardWriter(out, stem_for=lambda s: f"s{s:05d}", max_samples=10**6, max_bytes=1 << 40,
                    on_commit=lambda p, r: None)  # fmt: skip
    logmel = LogMel(cfg.spec_preset, cfg.sample_rate_hz)
    TIMES.clear()
    CPU.clear()
    CALLS.clear()
    c0, s0, t0 = children_cpu_s(), self_cpu_s(), time.perf_counter()
    row = process_video(inp, cfg, w, logmel, threads=threads)
    w.commit()
    wall = time.perf_counter() - t0
    res = {
        "wall_s": wall,
        "self_cpu_s": self_cpu_s() - s0,
        "children_cpu_s": children_cpu_s() - c0,
        "parts_s": dict(TIMES),
        "parts_cpu_s": dict(CPU),
        "calls": dict(CALLS),
        "duration_s": row["duration_s"],
        "segments": row["n_segments"],
    }
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    return res


def fresh_import_s(code: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of running ``code`` in a fresh interpreter."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport resource;"
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return time.perf_counter() - t0, int(out.split()[-1]) / 1024


# -- experiments -------------------------------------------------------------
def exp_decord_threads(video: Path, repeats: int) -> dict:
    """Wall and CPU of the frame reads alone, decord num_threads 1 vs 2."""
    from avprep.decode import open_frames  # noqa: PLC0415
    from avprep.probe import probe  # noqa: PLC0415

    info = probe(str(video))
    res = {}
    for threads in (1, 2):
        walls, cpus = [], []
        for _ in range(repeats):
            s0, t0 = self_cpu_s(), time.perf_counter()
            f = open_frames(str(video), info, short_side_px=128, threads=threads, decoder="decord")
            start = 0.0
            while start < info.duration_s - 1:
                f.read(start, start + 10.0, 16.0)
                start += 10.0
            f.close()
            walls.append(time.perf_counter() - t0)
            cpus.append(self_cpu_s() - s0)
        res[threads] = {"wall_s": min(walls), "cpu_s": min(cpus)}
    return res


def exp_jpeg(video: Path, repeats: int) -> dict:
    """JPEG per frame at 228x128: from RGB (today) vs from YUV 4:2:0 planes."""
    import simplejpeg  # noqa: PLC0415

    w, h, n = 228, 128, 400
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-frames:v", str(n), "-vf",
         f"scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    rgb = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-frames:v", str(n), "-vf",
         f"scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    fsize = w * h * 3 // 2
    yuv = [np.frombuffer(raw[i * fsize : (i + 1) * fsize], np.uint8) for i in range(n)]
    planes = [
        (f[: w * h].reshape(h, w), f[w * h : w * h * 5 // 4].reshape(h // 2, w // 2),
         f[w * h * 5 // 4 :].reshape(h // 2, w // 2))
        for f in yuv
    ]  # fmt: skip
    frames = np.frombuffer(rgb, np.uint8).reshape(n, h, w, 3)
    best_rgb = best_yuv = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for f in frames:
            simplejpeg.encode_jpeg(f, quality=90, colorspace="RGB", colorsubsampling="420")
        best_rgb = min(best_rgb, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for y, u, v in planes:
            simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=90)
        best_yuv = min(best_yuv, time.perf_counter() - t0)
    return {"rgb_ms_per_frame": 1e3 * best_rgb / n, "yuv_ms_per_frame": 1e3 * best_yuv / n}


def exp_logmel(repeats: int) -> dict:
    """avprep's numpy log-mel against its torchaudio reference: speed and agreement."""
    import torch  # noqa: PLC0415

    from avprep.spectrogram import PRESETS, LogMel  # noqa: PLC0415

    class Reference:
        def __init__(self, preset: str, sample_rate: int) -> None:
            self.mel, self.offset = (
                LogMel(preset, sample_rate).reference(),
                PRESETS[preset].log_offset,
            )

        def __call__(self, wave: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return (
                    torch.log(self.mel(torch.from_numpy(wave)) + self.offset)
                    .numpy()
                    .astype(np.float16)
                )

    rng = np.random.default_rng(0)
    t = np.arange(160_000) / 16000
    wave = (0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(
        np.float32
    )
    res = {}
    for preset in ("logmel128", "vggish64"):
        ta, nm = Reference(preset, 16000), LogMel(preset, 16000)
        a, b = ta(wave).astype(np.float32), nm(wave).astype(np.float32)
        best_ta = best_np = float("inf")
        for _ in range(repeats):
            c0 = time.process_time()
            ta(wave)
            best_ta = min(best_ta, time.process_time() - c0)
            c0 = time.process_time()
            nm(wave)
            best_np = min(best_np, time.process_time() - c0)
        res[preset] = {
            "torchaudio_ms_per_10s": 1e3 * best_ta,
            "numpy_ms_per_10s": 1e3 * best_np,
            "max_abs_diff": float(np.max(np.abs(a - b))),
            "range": [float(a.min()), float(a.max())],
            "shape": list(a.shape),
        }
    return res


def cpu_by_thread(videos: list[Path], workers: int) -> dict:
    """CPU seconds of a whole ``avprep shard`` run by process role and thread, sampled
    from /proc every 10 ms (``proctree.TreeCPU``); the rusage of the run for comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        before = children_cpu_s()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "avprep", "shard", *map(str, videos), "--out", tmp + "/o",
               "--workers", str(workers), "--quiet"]  # fmt: skip
        proc = subprocess.Popen(cmd)
        sampler = TreeCPU(proc.pid)
        proc.wait()
        sampler.stop()
        wall = time.perf_counter() - t0
        total = children_cpu_s() - before
    return {"wall_s": wall, "cpu_s": total, "parts_s": sampler.by_part()}


def exp_overlap(video: Path, threads: int, repeats: int) -> dict:
    """Frames + JPEG of a whole video: in turn (today) vs JPEG on a thread, one segment behind."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from avprep.decode import open_frames  # noqa: PLC0415
    from avprep.probe import probe  # noqa: PLC0415

    info = probe(str(video))

    def run(overlap: bool) -> float:
        f = open_frames(str(video), info, short_side_px=128, threads=threads, decoder="decord")

        def encode_all(images) -> int:
            return sum(len(f.encode_jpeg(im, 90)) for im in images)

        t0, start, pending = time.perf_counter(), 0.0, None
        with ThreadPoolExecutor(1) as pool:
            while start < info.duration_s - 1:
                images, _ = f.read(start, start + 10.0, 16.0)
                if overlap:
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(encode_all, images)
                else:
                    encode_all(images)
                start += 10.0
            if pending is not None:
                pending.result()
        f.close()
        return time.perf_counter() - t0

    serial, overlapped = [], []
    for _ in range(repeats):
        serial.append(run(False))
        overlapped.append(run(True))
    return {"serial_s": min(serial), "overlapped_s": min(overlapped)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("video", type=Path, nargs="+", help="Profiled: the first; all: the run.")
    ap.add_argument("--threads", type=int, default=1, help="decord threads (the worker's).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="For the whole run's CPU split.")
    args = ap.parse_args()
    videos, args.video = args.video, args.video[0]

    print("before a worker's first file (fresh interpreter, wall s / peak RSS MB):")
    for label, code in (
        ("python", "pass"),
        ("import torch", "import torch"),
        ("worker imports", "import torch, torchaudio, decord, simplejpeg, avprep.sample, "
                           "avprep.spectrogram, avprep.writer"),
        ("worker imports without torch", "import decord, simplejpeg, numpy, pyarrow"),
        ("parent imports", "import avprep.cli_app, avprep.pipeline, avprep.progress, pyarrow"),
    ):  # fmt: skip
        wall, rss = fresh_import_s(code)
        print(f"  {label:<32} {wall:6.2f} s {rss:6.0f} MB")

    instrument()
    runs = [profile_once(args.video, args.threads) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["wall_s"])
    dur = best["duration_s"]
    print(
        f"\nprocess_video on {args.video.name} ({dur:.0f} s of video, {best['segments']} segments, "
        f"decord threads={args.threads}); fastest of {args.repeats}:"
    )
    print(f"  wall {best['wall_s']:.2f} s = {dur / best['wall_s']:.1f} video s/s")
    print(
        f"  CPU: this process {best['self_cpu_s']:.2f} s, children {best['children_cpu_s']:.2f} s"
    )
    print(f"  {'part':<44} {'wall s':>7} {'%':>5} {'CPU s':>6}  calls  (CPU: this thread's)")
    for name, sec in sorted(best["parts_s"].items(), key=lambda kv: -kv[1]):
        print(
            f"  {name:<44} {sec:7.3f} {100 * sec / best['wall_s']:5.1f} "
            f"{best['parts_cpu_s'][name]:6.3f}  {best['calls'][name]}"
        )
    rest = best["wall_s"] - sum(best["parts_s"].values())
    print(
        f"  {'the rest (json, frame selection, python)':<44} {rest:7.3f} {100 * rest / best['wall_s']:5.1f}"
    )

    print("\nexperiments (best of repeats):")
    for t, r in exp_decord_threads(args.video, args.repeats).items():
        print(
            f"  decord num_threads={t}: frames alone {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU"
        )
    ov = exp_overlap(args.video, args.threads, args.repeats)
    print(
        f"  frames + JPEG, decord threads={args.threads}: in turn {ov['serial_s']:.2f} s, "
        f"JPEG on a thread one segment behind {ov['overlapped_s']:.2f} s"
    )
    j = exp_jpeg(args.video, args.repeats)
    print(
        f"  JPEG 228x128 q90: from RGB {j['rgb_ms_per_frame']:.3f} ms/frame, "
        f"from YUV420 planes {j['yuv_ms_per_frame']:.3f} ms/frame"
    )
    for blas in ("default", "1"):  # OpenBLAS threads can only be set before numpy loads
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if blas != "default":
            env["OPENBLAS_NUM_THREADS"] = blas
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import profile_shard as p; "
            f"print(json.dumps(p.exp_logmel({max(args.repeats, 20)})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for preset, lm in json.loads(out).items():
            print(
                f"  {preset} of 10 s, OPENBLAS_NUM_THREADS={blas}: torchaudio "
                f"{lm['torchaudio_ms_per_10s']:.1f} ms CPU, numpy {lm['numpy_ms_per_10s']:.1f} ms "
                f"CPU; max |diff| {lm['max_abs_diff']:.4f} on values in "
                f"[{lm['range'][0]:.1f}, {lm['range'][1]:.1f}] (float16), shape {lm['shape']}"
            )

    runs = [cpu_by_thread(videos, args.workers) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["wall_s"])
    sampled = sum(best["parts_s"].values())
    print(
        f"\navprep shard of {len(videos)} file(s), --workers {args.workers}, CPU by process and "
        f"thread (fastest of {args.repeats}): wall {best['wall_s']:.2f} s, CPU {best['cpu_s']:.2f} s "
        f"(rusage), {sampled:.2f} s sampled"
    )
    for name, sec in sorted(best["parts_s"].items(), key=lambda kv: -kv[1]):
        if sec >= 0.005:
            print(f"  {name:<40} {sec:6.2f} s {100 * sec / sampled:5.1f}%")


if __name__ == "__main__":
    main()
