"""cmac_core's training loader on schema v1 and v2 shards, against its bound, in one run.

    python benchmarks/bench_loader.py [--data DIR] [--json PATH] [--workers 1,2] [--repeats 3]

Inputs are made once and cached in ``--data``: ``--videos`` synthetic videos of
``--video-seconds`` at 640x360, 25 fps, H.264 + AAC (``avprep.synth.make_demo_video``:
a square moving over a gradient, with a tone), sharded with ``python -m avprep
shard VIDEOS --out SHARDS --quiet --shard-max-samples 8``: the defaults (16 fps,
short side 128, 10 s segments, logmel128, schema v2) with small shards, so every loader
worker has shards of its own; and the same shards rewritten as schema v1
(``avprep.read_sample.convert_shard``: the same JPEG bytes and spectrograms, a member
per frame).

For each loader worker count N, in one run, each side a torch DataLoader with N
worker processes, batches of ``--batch-size`` clips, the ``base`` DataConfig
(8 frames at 16 fps, 112 px crops, 0.5 s of audio):

- v1 loader: ``cmac_core.data.loader.train_stream`` on the v1 shards (each sample read
  whole by webdataset's tar stream, then SafeDecode -> ClipWindow -> shuffle ->
  DecodeFrames -> batched -> Augment), as the trainer iterates it;
- v2 loader: the same on the v2 shards: the seek reader (``cmac_core.data.seek``) reads
  tar headers, the json, and only the clip's frames and spectrogram columns;
- v1 reader, v2 reader: the same pipelines without Augment (the batch is the list of
  decoded clips): what reading costs, apart from cropping and batching;
- bound: the clips' work with no reading at all: each worker holds its shards' samples
  in memory (frames as JPEG bytes, spectrograms as arrays), and per clip draws a window,
  decodes its 8 JPEGs with simplejpeg and copies its spectrogram columns;
- bound + Augment: the same, then the loader's own ``Augment`` stage makes the batch (crop,
  resize, flip, jitter factors, spectrogram tensors in shared memory): the loaders' bound;
- from source (AVID-style, ``--sides ...,source``): each clip decoded from its source
  mp4: decord opens the video resized to short side 128 and decodes the 8 frames at 16
  fps from a random offset; an ffmpeg process decodes the same 0.5 s of audio at 16 kHz
  mono; torchaudio makes the 128-bin log-mel; then the loader's own ``Augment``.

Each run skips ``--warmup-clips`` clips per worker (worker start-up, the shuffle
buffer filling, the bound loading its samples) and then times ``--clips`` clips per
worker (``--source-clips`` from source); throughput is the median over ``--repeats`` of
clips per wall second, also per worker. CPU is user + system seconds of the worker
processes (and their children: ffmpeg) and the main process per clip, read from /proc;
clips per loader core is clips per CPU second. MB read per clip is what the workers'
read calls returned (``rchar`` of /proc/PID/io: page cache or storage alike), and MB used
is the clip's frames' JPEG bytes plus its spectrogram columns' bytes. The ratios are
also given by CPU time, which other work on the machine skews less than wall time (the
load average is recorded). ``--sides v1,v2`` runs only some sides. The benchmark
measures; it never asserts.
"""

from __future__ import annotations

import argparse
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
from avprep.read_sample import convert_shard, frame_jpegs, sample_meta, spec_array
from cmac_core.config import DataConfig, preset
from cmac_core.data.clip import Window, choose_window, cut_columns, frame_indices
from cmac_core.data.loader import train_pipeline, train_stream
from cmac_core.data.shards import SharedEpoch, resolve, worker_coords
from cmac_core.data.stages import Augment

SIZE = (640, 360)
FPS = 16.0  # avprep shard's default, and the clip rate of the from-source side
SHORT_SIDE = 128
SAMPLE_RATE = 16000
SHARD_SAMPLES = 8
COLORS = ("orange", "blue", "red", "yellow", "green", "white", "cyan", "magenta")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- inputs ------------------------------------------------------------------
def make_inputs(data: Path, *, videos: int, video_s: float) -> tuple[Path, Path, Path]:
    """(folder of the videos, of their v2 shards, of the same shards as v1), made once."""
    from avprep.synth import make_demo_video  # noqa: PLC0415

    w, h = SIZE
    video_dir = data / f"videos-{videos}x{video_s:g}s-{w}x{h}"
    shard_dir = data / f"shards-{videos}x{video_s:g}s-{w}x{h}-v{schema.SCHEMA_VERSION}"
    v1_dir = data / f"shards-{videos}x{video_s:g}s-{w}x{h}-v{schema.SCHEMA_VERSION}-as-v1"
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
        shutil.rmtree(v1_dir, ignore_errors=True)
    if not list(v1_dir.glob("*.tar")):
        tmp = data / f".part-{v1_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for tar in sorted(shard_dir.glob("*.tar")):
            convert_shard(tar, tmp / tar.name, version=1)
        tmp.replace(v1_dir)
    took = time.perf_counter() - t0
    if took > 1:
        print(f"made inputs in {data} ({took:.0f} s)", file=sys.stderr)
    return video_dir, shard_dir, v1_dir


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
    """The bound: a clip's work with no reading. Each worker first loads its shards' samples
    into memory (each frame's JPEG bytes, the spectrogram); then per clip it draws a window
    (as ``ClipWindow``), decodes the window's JPEGs with simplejpeg and copies its
    spectrogram columns. Yields, per ``batch_size`` clips, the list of their keys (the
    decoded arrays are dropped in the worker), or with ``augment`` (a DataConfig) the
    batch the loader's own ``Augment`` makes of them."""

    def __init__(self, urls: list[str], *, clip_frames: int, batch_size: int, seed: int,
                 augment: DataConfig | None = None) -> None:  # fmt: skip
        super().__init__()
        self.urls, self.clip_frames, self.batch_size = urls, clip_frames, batch_size
        self.seed, self.augment = seed, augment

    def __iter__(self):
        worker, n_workers = worker_coords()
        mine = self.urls[worker::n_workers] or self.urls
        samples = []
        for sample in wds.tarfile_to_samples()({"url": u} for u in mine):
            meta = sample_meta(sample)
            samples.append((meta, frame_jpegs(sample, meta), np.array(spec_array(sample, meta))))
        rng = np.random.default_rng([self.seed, worker])
        augment = None
        if self.augment is not None:
            augment = Augment(self.augment, seed=self.seed, rank=0, epoch=None)  # the loader's
        batch = []
        while True:
            meta, jpegs, spec = samples[int(rng.integers(len(samples)))]
            w = choose_window(meta, self.clip_frames, rng)
            idx = frame_indices(w, len(jpegs))
            frames = np.stack([simplejpeg.decode_jpeg(jpegs[i], colorspace="RGB") for i in idx])
            cols = cut_columns(spec, w, meta["spec_min"])
            if augment is None:
                del frames, cols
                batch.append(meta["key"])
            else:
                batch.append({"key": meta["key"], "meta": meta, "window": w, "frames": frames,
                              "spec": cols})  # fmt: skip
            if len(batch) == self.batch_size:
                yield batch if augment is None else augment(batch)
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


def proc_rchar(pid: int) -> int:
    """Bytes the process's read calls returned (``rchar``: from the page cache or storage)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))
    except (OSError, StopIteration):
        return 0


def n_clips(batch) -> int:
    return len(batch["key"]) if isinstance(batch, dict) else len(batch)


def used_bytes(batch) -> int:
    """Bytes a batch of the reader sides uses: its clips' JPEGs and spectrogram columns (0
    for batches that hold no bytes: the loader's tensors, the bound's keys)."""
    if not isinstance(batch, list) or not batch or not isinstance(batch[0], dict):
        return 0
    return sum(c["jpeg_bytes"] + c["spec_bytes"] for c in batch)


def timed(loader, workers: int, *, warmup: int, clips: int) -> dict:
    """Skip ``warmup`` clips per worker, then time ``clips`` clips per worker."""
    it = iter(loader)
    try:
        seen = 0
        while seen < warmup * max(1, workers):
            seen += n_clips(next(it))
        kids = children(os.getpid())
        main0, kids0 = proc_cpu_s(os.getpid()), sum(proc_cpu_s(p) for p in kids)
        read0 = sum(proc_rchar(p) for p in kids) if kids else proc_rchar(os.getpid())
        t0 = time.perf_counter()
        done = used = 0
        while done < clips * max(1, workers):
            batch = next(it)
            done += n_clips(batch)
            used += used_bytes(batch)
        wall = time.perf_counter() - t0
        main = proc_cpu_s(os.getpid()) - main0
        read = (sum(proc_rchar(p) for p in kids) if kids else proc_rchar(os.getpid())) - read0
        kids = sum(proc_cpu_s(p) for p in kids) - kids0
    finally:
        del it  # shuts the workers down
    return {"clips": done, "wall_s": wall, "cpu_s": main + kids, "main_cpu_s": main,
            "read_bytes": read, "used_bytes": used}  # fmt: skip


def loader_run(shards: Path, cfg: DataConfig, workers: int, batch: int, seed: int, **n) -> dict:
    stream = train_stream(str(shards), cfg, batch_size=batch, workers=workers, seed=seed)
    return timed(stream.loader, workers, **n)


class ReaderOnly(IterableDataset):
    """The training pipeline up to decoded frames, without Augment; the decoded clips stay
    in the worker, which yields per batch the list of ``{"key", "jpeg_bytes", "spec_bytes"}``."""

    def __init__(self, urls: list[str], cfg: DataConfig, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.urls, self.cfg, self.batch_size, self.seed = urls, cfg, batch_size, seed

    def __iter__(self):
        pipe = train_pipeline(self.urls, self.cfg, batch_size=self.batch_size, rank=0,
                              world_size=1, epoch=SharedEpoch(0), seed=self.seed)  # fmt: skip
        pipe.pipeline = pipe.pipeline[:-1]  # no Augment: the batch is the list of clips
        pipe.pipeline.insert(2, _sizes)
        for batch in pipe:
            yield [{"key": c["key"], "jpeg_bytes": c["jpeg_bytes"], "spec_bytes": c["spec"].nbytes}
                   for c in batch]  # fmt: skip


def _sizes(src):
    """Records each clip's JPEG bytes before DecodeFrames drops them."""
    for c in src:
        if "jpegs" in c:
            c["jpeg_bytes"] = sum(len(j) for j in c["jpegs"])
        yield c


def reader_run(shards: Path, cfg: DataConfig, workers: int, batch: int, seed: int, **n) -> dict:
    ds = ReaderOnly(resolve(str(shards)), cfg, batch_size=batch, seed=seed)
    return timed(data_loader(ds, workers), workers, **n)


def data_loader(dataset: IterableDataset, workers: int) -> DataLoader:
    """The loader's process layout: N workers, batches made in the workers."""
    return DataLoader(dataset, batch_size=None, num_workers=workers,
                      prefetch_factor=4 if workers > 0 else None)  # fmt: skip


def bound_run(shards: Path, cfg: DataConfig, workers: int, batch: int, seed: int, *,
              augment: bool = False, **n) -> dict:  # fmt: skip
    ds = DecodeOnly(resolve(str(shards)), clip_frames=cfg.clip_frames, batch_size=batch, seed=seed,
                    augment=cfg if augment else None)  # fmt: skip
    return timed(data_loader(ds, workers), workers, **n)


def first_batch_run(shards: Path, cfg: DataConfig, workers: int, batch: int, seed: int, *,
                    at: int) -> dict:  # fmt: skip
    """Seconds from making the loader to its first batch: fresh, and resumed ``at`` batches
    in (``data.position``: each reader replays headers, json and windows, decodes nothing
    it skips), and whether the resumed first batch is the uninterrupted stream's."""
    from cmac_core.data.position import Position  # noqa: PLC0415

    def first(start=None):
        t0 = time.perf_counter()
        stream = train_stream(str(shards), cfg, batch_size=batch, workers=workers, seed=seed,
                              start=start)  # fmt: skip
        it = iter(stream.loader)
        keys = next(it)["key"]
        wall = time.perf_counter() - t0
        del it
        return wall, keys

    stream = train_stream(str(shards), cfg, batch_size=batch, workers=workers, seed=seed)
    pos, it = Position(max(1, workers)), iter(stream.loader)
    for _ in range(at):
        pos.note(next(it)["reader"])
    want = next(it)["key"]
    del it
    fresh, _ = first()
    resumed, keys = first([list(r) for r in pos.readers])
    return {"workers": workers, "at_batches": at, "fresh_s": fresh, "resumed_s": resumed,
            "same_batch": keys == want}  # fmt: skip


def source_run(videos: list[dict], cfg: DataConfig, workers: int, batch: int, seed: int, **n):
    ds = FromSource(videos, cfg, batch_size=batch, seed=seed)
    return timed(data_loader(ds, workers), workers, **n)


def median_run(runs: list[dict], workers: int) -> dict:
    rates = [r["clips"] / r["wall_s"] for r in runs]
    rate = statistics.median(rates)
    cpu_ms = 1e3 * statistics.median(r["cpu_s"] / r["clips"] for r in runs)
    return {
        "clips_per_s": rate,
        "clips_per_s_per_worker": rate / workers,
        "cpu_ms_per_clip": cpu_ms,
        "clips_per_core_s": 1e3 / cpu_ms,
        "main_cpu_ms_per_clip": 1e3 * statistics.median(r["main_cpu_s"] / r["clips"] for r in runs),
        "mb_read_per_clip": statistics.median(r["read_bytes"] / r["clips"] for r in runs) / 1e6,
        "mb_used_per_clip": statistics.median(r["used_bytes"] / r["clips"] for r in runs) / 1e6,
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


SIDES = (("v1", "v1 loader (stream)"), ("v2", "v2 loader (seek)"),
         ("v1read", "v1 reader, no augment"), ("v2read", "v2 reader, no augment"),
         ("bound", "bound: decode from RAM"), ("boundaug", "bound + Augment"),
         ("source", "from source (decord)"))  # fmt: skip


def print_report(res: dict) -> None:
    m, inp = res["machine"], res["inputs"]
    print(f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, webdataset {m['webdataset']}, "
          f"decord {m['decord']}; cmac_core {m['commit']}; {m['date']}; load average "
          f"{m['loadavg_before']:.1f} before, {m['loadavg_after']:.1f} after")  # fmt: skip
    print(f"inputs: {inp['videos']} x {inp['video_seconds']:g} s {inp['size']} H.264+AAC -> "
          f"{inp['samples']} samples in {inp['shards']} shards ({inp['shard_mb']:.0f} MB v2, "
          f"{inp['v1_shard_mb']:.0f} MB v1); clips of {inp['clip_frames']} frames, "
          f"{inp['crop_px']} px crops; batch {res['batch_size']}; median of {res['repeats']} runs")  # fmt: skip
    print()
    print(f"{'workers':>7}  {'side':<22}  {'clips/s':>8}  {'per worker':>10}  {'CPU ms/clip':>11}  "
          f"{'clips/core-s':>12}  {'MB read/clip':>12}  {'x bound (CPU)':>13}")  # fmt: skip
    for row in res["by_workers"]:
        for side, label in SIDES:
            if side not in row:
                continue
            s = row[side]
            # the loaders against the bound with Augment, the readers against the bare bound
            ref = row.get("boundaug" if side in ("v1", "v2") else "bound")
            ratio = f"{s['cpu_ms_per_clip'] / ref['cpu_ms_per_clip']:.2f}x" if ref else ""
            print(f"{row['workers']:>7}  {label:<22}  {s['clips_per_s']:>8.1f}  "
                  f"{s['clips_per_s_per_worker']:>10.1f}  {s['cpu_ms_per_clip']:>11.2f}  "
                  f"{s['clips_per_core_s']:>12.0f}  {s['mb_read_per_clip']:>12.4f}  {ratio:>13}")  # fmt: skip
        for side in ("v1read", "v2read"):
            if side in row and row[side]["mb_used_per_clip"]:
                s = row[side]
                print(f"{'':>7}  {side}: {s['mb_used_per_clip']:.4f} MB used per clip, read "
                      f"{s['mb_read_per_clip'] / s['mb_used_per_clip']:.2f}x of it")  # fmt: skip
    print()
    print("x bound (CPU): the loaders against the bound + Augment, the readers and the bound "
          "+ Augment against the bare bound")  # fmt: skip
    print("goals (issue 16): CPU per clip <= 1.5x the bound; bytes read <= 2x the bytes used; "
          "the v2 loader no slower than v1")  # fmt: skip


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
    ap.add_argument("--sides", default="v1,v2,v1read,v2read,bound,boundaug", help="Which sides to run "
                    f"({','.join(s for s, _ in SIDES)}).")  # fmt: skip
    ap.add_argument("--clips-per-sample", type=int, default=1, help="data.clips_per_sample.")
    ap.add_argument("--first-batch", type=int, default=0, help="Also time the first batch of a "
                    "fresh loader and of one resumed this many batches in (0: not).")  # fmt: skip
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    sides = [s for s, _ in SIDES if s in args.sides.split(",")]
    cfg = preset("base").data
    if args.clips_per_sample != 1:
        cfg = DataConfig(**{**cfg.__dict__, "clips_per_sample": args.clips_per_sample})

    video_dir, shard_dir, v1_dir = make_inputs(args.data, videos=args.videos,
                                               video_s=args.video_seconds)  # fmt: skip
    videos = [probe(p) for p in sorted(video_dir.glob("*.mp4"))] if "source" in sides else []
    tars, v1_tars = resolve(str(shard_dir)), resolve(str(v1_dir))
    res = {
        "machine": machine(),
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "clips_per_sample": cfg.clips_per_sample,
        "inputs": {
            "videos": args.videos,
            "video_seconds": args.video_seconds,
            "size": f"{SIZE[0]}x{SIZE[1]}",
            "shards": len(tars),
            "samples": sum(1 for _ in wds.tarfile_to_samples()({"url": u} for u in tars)),
            "shard_mb": sum(os.path.getsize(u) for u in tars) / 1e6,
            "v1_shard_mb": sum(os.path.getsize(u) for u in v1_tars) / 1e6,
            "clip_frames": cfg.clip_frames,
            "crop_px": cfg.crop_px,
        },
        "clips_timed_per_worker": {"source": args.source_clips, "others": args.clips},
    }
    n = {"warmup": args.warmup_clips, "clips": args.clips}
    n_source = {"warmup": args.batch_size, "clips": args.source_clips}
    bs = args.batch_size
    run = {
        "v1": lambda w, rep: loader_run(v1_dir, cfg, w, bs, rep, **n),
        "v2": lambda w, rep: loader_run(shard_dir, cfg, w, bs, rep, **n),
        "v1read": lambda w, rep: reader_run(v1_dir, cfg, w, bs, rep, **n),
        "v2read": lambda w, rep: reader_run(shard_dir, cfg, w, bs, rep, **n),
        "bound": lambda w, rep: bound_run(shard_dir, cfg, w, bs, rep, **n),
        "boundaug": lambda w, rep: bound_run(shard_dir, cfg, w, bs, rep, augment=True, **n),
        "source": lambda w, rep: source_run(videos, cfg, w, bs, rep, **n_source),
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
        if "v1" in row and "v2" in row:
            row["v2_vs_v1_by_cpu"] = row["v1"]["cpu_ms_per_clip"] / row["v2"]["cpu_ms_per_clip"]
        res["by_workers"].append(row)
    res["machine"]["loadavg_after"] = os.getloadavg()[0]
    print_report(res)
    if args.first_batch:
        res["first_batch"] = []
        for w in workers:
            for rep in range(args.repeats):
                r = first_batch_run(shard_dir, cfg, w, bs, rep, at=args.first_batch)
                res["first_batch"].append(r)
                print(f"first batch, {w} workers: fresh {r['fresh_s']:.2f} s, resumed "
                      f"{args.first_batch} batches in {r['resumed_s']:.2f} s "
                      f"(the same batch: {r['same_batch']})")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
