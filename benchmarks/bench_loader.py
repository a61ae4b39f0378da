"""cmac_core's training loader against its bounds, on the same shards and worker counts.

    python benchmarks/bench_loader.py [--data DIR] [--json PATH] [--workers 1,2] [--repeats 3]

Inputs are made once and cached in ``--data``: ``--videos`` synthetic videos of
``--video-seconds`` at 640x360, 25 fps, H.264 + AAC (``avprep.synth.make_demo_video``:
a square moving over a gradient, with a tone), sharded with ``python -m avprep
shard VIDEOS --out SHARDS --quiet --shard-max-samples 8``: the defaults (16 fps,
short side 128, 10 s segments, logmel128) with small shards, so every loader
worker has shards of its own.

For each loader worker count N, in one run, each side a torch DataLoader with N
worker processes, batches of ``--batch-size`` clips, the ``base`` DataConfig
(8 frames at 16 fps, 112 px crops):

- loader: ``cmac_core.data.loader.train_stream`` (shards -> samples ->
  SafeDecode -> ClipWindow -> shuffle -> DecodeFrames -> batched -> Augment);
- bound: the same shards read with webdataset's ``tarfile_to_samples``, and for
  each sample ``clip_frames`` of its JPEGs decoded with simplejpeg and its
  spec.npy loaded, with no other work; the decoded arrays stay in the worker,
  which yields a list of the clips' keys per batch;
- from source (AVID-style): each clip decoded from its source mp4 on the fly:
  decord opens the video resized to short side 128 and decodes the 8 frames at
  16 fps from a random offset; an ffmpeg process decodes the same 0.5 s of audio
  at 16 kHz mono; torchaudio makes the 128-bin log-mel (logmel128's settings);
  then the loader's own ``Augment`` stage (crop, flip, jitter, normalisation,
  batch).

Each run skips ``--warmup-clips`` clips per worker (worker start-up, the shuffle
buffer filling) and then times ``--clips`` clips per worker (``--source-clips``
from source); throughput is the median over ``--repeats`` of clips per wall
second, also per worker. CPU is user + system seconds of the worker processes
(and their children: ffmpeg) and the main process per clip, read from /proc;
the ratios are also given by CPU time, which other work on the machine skews
less than wall time (the load average is recorded). ``--sides loader,bound``
runs only some sides. The benchmark measures; it never asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from common import (  # benchmarks/common.py: the script's folder is on sys.path
    REPO,
    commit,
    cpu_model,
)
from torch.utils.data import DataLoader, IterableDataset

from avprep import schema
from cmac_core.config import DataConfig, preset
from cmac_core.data.clip import Window
from cmac_core.data.loader import train_stream
from cmac_core.data.shards import resolve, worker_coords
from cmac_core.data.stages import Augment

SIZE = (640, 360)
FPS = 16.0  # avprep shard's default, and the clip rate of the from-source side
SHORT_SIDE = 128
SAMPLE_RATE = 16000
SHARD_SAMPLES = 8
COLORS = ("orange", "blue", "red", "yellow", "green", "white", "cyan", "magenta")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- inputs ------------------------------------------------------------------
def make_inputs(data: Path, *, videos: int, video_s: float) -> tuple[Path, Path]:
    """(folder of the videos, folder of their shards), made once and reused."""
    from avprep.synth import make_demo_video  # noqa: PLC0415

    w, h = SIZE
    video_dir = data / f"videos-{videos}x{video_s:g}s-{w}x{h}"
    shard_dir = data / f"shards-{videos}x{video_s:g}s-{w}x{h}-v{schema.SCHEMA_VERSION}"
    video_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(videos):
        path = video_dir / f"video{i:02d}.mp4"
        if not path.exists():
            part = video_dir / f".part-{path.name}"
            make_demo_video(part, duration_s=video_s, size=SIZE, tone_hz=220 + 110 * i,
                            color=COLORS[i % len(COLORS)])  # fmt: skip
            part.replace(path)
    if not list(shard_dir.glob("*.tar")):
        tmp = data / f".part-{shard_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shard_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "avprep", "shard", str(video_dir), "--out", str(tmp),
               "--shard-max-samples", str(SHARD_SAMPLES), "--quiet"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True)
        tmp.replace(shard_dir)
    took = time.perf_counter() - t0
    if took > 1:
        print(f"made inputs in {data} ({took:.0f} s)", file=sys.stderr)
    return video_dir, shard_dir


def probe(path: Path) -> dict:
    """Width, height, frame rate and duration of the video stream (an AVID-style index)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height,avg_frame_rate,duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    s = json.loads(out)["streams"][0]
    num, den = s["avg_frame_rate"].split("/")
    return {"path": str(path), "width": int(s["width"]), "height": int(s["height"]),
            "fps": int(num) / int(den), "duration_s": float(s["duration"])}  # fmt: skip


# -- the three sides ---------------------------------------------------------
class DecodeOnly(IterableDataset):
    """The bound: read the shards, decode ``clip_frames`` JPEGs and the spec.npy per sample.

    Yields, per ``batch_size`` samples, the list of their keys; the decoded
    arrays are dropped in the worker.
    """

    def __init__(self, urls: list[str], *, clip_frames: int, batch_size: int) -> None:
        super().__init__()
        self.urls, self.clip_frames, self.batch_size = urls, clip_frames, batch_size
        self.members = [schema.frame_member(i) for i in range(clip_frames)]

    def __iter__(self):
        worker, n_workers = worker_coords()
        mine = self.urls[worker::n_workers] or self.urls
        read = wds.tarfile_to_samples()
        batch = []
        while True:
            for sample in read({"url": u} for u in mine):
                frames = [simplejpeg.decode_jpeg(sample[m], colorspace="RGB") for m in self.members]
                spec = np.load(io.BytesIO(sample[schema.SPEC]), allow_pickle=False)
                del frames, spec
                batch.append(sample["__key__"])
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []


class FromSource(IterableDataset):
    """AVID-style: every clip decoded from its source video (decord) and audio (ffmpeg)."""

    def __init__(self, videos: list[dict], cfg: DataConfig, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.videos, self.cfg, self.batch_size, self.seed = videos, cfg, batch_size, seed
        self.clip_s = cfg.clip_frames / FPS
        self.win, self.hop = round(0.025 * SAMPLE_RATE), round(0.010 * SAMPLE_RATE)
        n_columns = round(self.clip_s / 0.010)  # the loader's column count for a clip
        self.n_samples = (n_columns - 1) * self.hop + self.win

    def __iter__(self):
        import decord  # noqa: PLC0415
        import torchaudio  # noqa: PLC0415

        decord.logging.set_level(decord.logging.QUIET)
        worker, _ = worker_coords()
        rng = np.random.default_rng([self.seed, worker])
        augment = Augment(self.cfg, seed=self.seed, rank=0, epoch=None)  # the loader's own
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.win, win_length=self.win, hop_length=self.hop,
            n_mels=128, power=2.0, center=False, norm="slaney", mel_scale="slaney",
        )  # fmt: skip
        batch = []
        while True:
            v = self.videos[int(rng.integers(len(self.videos)))]
            start_s = float(rng.uniform(0, v["duration_s"] - self.clip_s - 0.1))
            frames = self.frames(v, start_s, decord)
            with torch.no_grad():
                spec = torch.log(mel(torch.from_numpy(self.audio(v, start_s))) + 1e-6).numpy()
            window = Window(0, len(frames), 0, spec.shape[1], start_s, self.clip_s)
            batch.append({"key": Path(v["path"]).stem, "frames": frames, "spec": spec,
                          "window": window})  # fmt: skip
            if len(batch) == self.batch_size:
                yield augment(batch)
                batch = []

    def frames(self, v: dict, start_s: float, decord) -> np.ndarray:
        """``[clip_frames, 128, W, 3]`` uint8: the frames on display at start_s + i / 16."""
        w, h = v["width"], v["height"]
        size = (round(w * SHORT_SIDE / h), SHORT_SIDE) if w >= h else (SHORT_SIDE, round(h * SHORT_SIDE / w))  # fmt: skip
        vr = decord.VideoReader(v["path"], width=size[0], height=size[1], num_threads=1)
        times = start_s + np.arange(self.cfg.clip_frames) / FPS
        idx = np.minimum(np.floor(times * v["fps"] + 1e-6).astype(int), len(vr) - 1)
        return vr.get_batch(idx.tolist()).asnumpy()

    def audio(self, v: dict, start_s: float) -> np.ndarray:
        """The clip's audio, mono float32 at 16 kHz, ``n_samples`` long (zero-padded)."""
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-ss", f"{start_s:.6f}",
               "-i", v["path"], "-t", f"{self.n_samples / SAMPLE_RATE:.6f}", "-vn", "-ac", "1",
               "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"]  # fmt: skip
        wave = np.frombuffer(
            subprocess.run(cmd, capture_output=True, check=True).stdout, np.float32
        )
        out = np.zeros(self.n_samples, np.float32)
        out[: min(len(wave), self.n_samples)] = wave[: self.n_samples]
        return out


# -- measuring ---------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    """User + system seconds of a process and its reaped children (ffmpeg), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime


def children(pid: int) -> list[int]:
    """Direct child processes (the loader workers) of ``pid``."""
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            kids += [int(c) for c in f.read().split()]
    return kids


def n_clips(batch) -> int:
    return len(batch["key"]) if isinstance(batch, dict) else len(batch)


def timed(loader, workers: int, *, warmup: int, clips: int) -> dict:
    """Skip ``warmup`` clips per worker, then time ``clips`` clips per worker."""
    it = iter(loader)
    try:
        seen = 0
        while seen < warmup * max(1, workers):
            seen += n_clips(next(it))
        kids = children(os.getpid())
        main0, kids0 = proc_cpu_s(os.getpid()), sum(proc_cpu_s(p) for p in kids)
        t0 = time.perf_counter()
        done = 0
        while done < clips * max(1, workers):
            done += n_clips(next(it))
        wall = time.perf_counter() - t0
        main = proc_cpu_s(os.getpid()) - main0
        kids = sum(proc_cpu_s(p) for p in kids) - kids0
    finally:
        del it  # shuts the workers down
    return {"clips": done, "wall_s": wall, "cpu_s": main + kids, "main_cpu_s": main}


def loader_run(shards: Path, cfg: DataConfig, workers: int, batch: int, seed: int, **n) -> dict:
    stream = train_stream(str(shards), cfg, batch_size=batch, workers=workers, seed=seed)
    return timed(stream.loader, workers, **n)


def data_loader(dataset: IterableDataset, workers: int) -> DataLoader:
    """The loader's process layout: N workers, batches made in the workers."""
    return DataLoader(dataset, batch_size=None, num_workers=workers,
                      prefetch_factor=4 if workers > 0 else None)  # fmt: skip


def bound_run(shards: Path, cfg: DataConfig, workers: int, batch: int, seed: int, **n) -> dict:
    ds = DecodeOnly(resolve(str(shards)), clip_frames=cfg.clip_frames, batch_size=batch)
    return timed(data_loader(ds, workers), workers, **n)


def source_run(videos: list[dict], cfg: DataConfig, workers: int, batch: int, seed: int, **n):
    ds = FromSource(videos, cfg, batch_size=batch, seed=seed)
    return timed(data_loader(ds, workers), workers, **n)


def median_run(runs: list[dict], workers: int) -> dict:
    rates = [r["clips"] / r["wall_s"] for r in runs]
    rate = statistics.median(rates)
    return {
        "clips_per_s": rate,
        "clips_per_s_per_worker": rate / workers,
        "cpu_ms_per_clip": 1e3 * statistics.median(r["cpu_s"] / r["clips"] for r in runs),
        "main_cpu_ms_per_clip": 1e3 * statistics.median(r["main_cpu_s"] / r["clips"] for r in runs),
        "rates": [round(r, 1) for r in rates],
    }


# -- report ------------------------------------------------------------------
def machine() -> dict:
    import decord  # noqa: PLC0415

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "webdataset": wds.__version__,
        "decord": decord.__version__,
        "simplejpeg": simplejpeg.__version__,
        "commit": commit("cmac_core"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_before": os.getloadavg()[0],  # other work on the machine skews wall times
    }


SIDES = (("loader", "cmac_core loader"), ("bound", "bound: read+decode"),
         ("source", "from source (decord)"))  # fmt: skip


def print_report(res: dict) -> None:
    m, inp = res["machine"], res["inputs"]
    print(f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, webdataset {m['webdataset']}, "
          f"decord {m['decord']}; cmac_core {m['commit']}; {m['date']}; load average "
          f"{m['loadavg_before']:.1f} before, {m['loadavg_after']:.1f} after")  # fmt: skip
    print(f"inputs: {inp['videos']} x {inp['video_seconds']:g} s {inp['size']} H.264+AAC -> "
          f"{inp['samples']} samples in {inp['shards']} shards ({inp['shard_mb']:.0f} MB); "
          f"clips of {inp['clip_frames']} frames, {inp['crop_px']} px crops; batch "
          f"{res['batch_size']}; median of {res['repeats']} runs")  # fmt: skip
    print()
    print(f"{'workers':>7}  {'side':<21}  {'clips/s':>8}  {'per worker':>10}  "
          f"{'CPU ms/clip':>11}  {'loader is (by CPU)':>18}")  # fmt: skip
    for row in res["by_workers"]:
        for side, label in SIDES:
            if side not in row:
                continue
            s, vs = row[side], row.get(f"loader_vs_{side}")
            ratio = ""
            if vs is not None:
                digits = 2 if side == "bound" else 1
                ratio = f"{vs:.{digits}f}x ({row[f'loader_vs_{side}_by_cpu']:.{digits}f}x)"
            print(f"{row['workers']:>7}  {label:<21}  {s['clips_per_s']:>8.1f}  "
                  f"{s['clips_per_s_per_worker']:>10.1f}  {s['cpu_ms_per_clip']:>11.2f}  "
                  f"{ratio:>18}")  # fmt: skip
    print()
    print("goals: loader >= 0.7x the bound; loader >= 3x from source")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "avprep-bench-loader"
    )
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--workers", default="1,2", help="Comma-separated loader worker counts.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--video-seconds", type=float, default=20.0)
    ap.add_argument("--warmup-clips", type=int, default=256, help="Per worker, not timed.")
    ap.add_argument("--clips", type=int, default=512, help="Timed clips per worker.")
    ap.add_argument("--source-clips", type=int, default=64, help="The same, from source.")
    ap.add_argument("--sides", default="loader,bound,source", help="Which sides to run.")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    sides = [s for s, _ in SIDES if s in args.sides.split(",")]
    cfg = preset("base").data

    video_dir, shard_dir = make_inputs(args.data, videos=args.videos, video_s=args.video_seconds)
    videos = [probe(p) for p in sorted(video_dir.glob("*.mp4"))]
    tars = resolve(str(shard_dir))
    res = {
        "machine": machine(),
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "inputs": {
            "videos": len(videos),
            "video_seconds": args.video_seconds,
            "size": f"{SIZE[0]}x{SIZE[1]}",
            "shards": len(tars),
            "samples": sum(1 for _ in wds.tarfile_to_samples()({"url": u} for u in tars)),
            "shard_mb": sum(os.path.getsize(u) for u in tars) / 1e6,
            "clip_frames": cfg.clip_frames,
            "crop_px": cfg.crop_px,
        },
        "clips_timed_per_worker": {
            "loader": args.clips,
            "bound": args.clips,
            "source": args.source_clips,
        },  # fmt: skip
    }
    n = {"warmup": args.warmup_clips, "clips": args.clips}
    n_source = {"warmup": args.batch_size, "clips": args.source_clips}
    run = {
        "loader": lambda w, rep: loader_run(shard_dir, cfg, w, args.batch_size, rep, **n),
        "bound": lambda w, rep: bound_run(shard_dir, cfg, w, args.batch_size, rep, **n),
        "source": lambda w, rep: source_run(videos, cfg, w, args.batch_size, rep, **n_source),
    }
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):  # interleaved, so drift hits every side alike
        for w in workers:
            print(f"run {rep + 1}/{args.repeats}, {w} workers", file=sys.stderr)
            for side in sides:
                runs.setdefault((side, w), []).append(run[side](w, rep))
    res["by_workers"] = []
    for w in workers:
        row = {"workers": w, **{side: median_run(runs[(side, w)], w) for side in sides}}
        for other in ("bound", "source"):
            if "loader" in row and other in row:
                rate = row["loader"]["clips_per_s"] / row[other]["clips_per_s"]
                row[f"loader_vs_{other}"] = rate
                cpu = row[other]["cpu_ms_per_clip"] / row["loader"]["cpu_ms_per_clip"]
                row[f"loader_vs_{other}_by_cpu"] = cpu
        res["by_workers"].append(row)
    res["machine"]["loadavg_after"] = os.getloadavg()[0]
    print_report(res)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
