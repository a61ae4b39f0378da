"""How bench_loader times a side: clips per wall second, CPU seconds of the main process
and the loader workers (and their children: ffmpeg) and bytes read, from /proc; one
``*_run`` per side, and the median over repeats."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from loader_sides import DecodeOnly, FromSource, ReaderOnly
from proctree import children  # benchmarks/proctree.py: the loader workers of this process
from torch.utils.data import DataLoader, IterableDataset

from cmac_core.config import DataConfig
from cmac_core.data import batch_memory
from cmac_core.data.loader import train_stream
from cmac_core.data.shards import resolve

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system seconds of a process and its reaped children (ffmpeg), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime


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


def consumed(batch):
    """The batch, its memory handed back to its loader worker as the trainer does once it
    has copied the video out (``batch_memory.release``)."""
    if isinstance(batch, dict):
        batch_memory.release(batch.pop(batch_memory.KEY, None))
    return batch


def timed(loader, workers: int, *, warmup: int, clips: int) -> dict:
    """Skip ``warmup`` clips per worker, then time ``clips`` clips per worker."""
    it = iter(loader)
    try:
        seen = 0
        while seen < warmup * max(1, workers):
            seen += n_clips(consumed(next(it)))
        kids = children(os.getpid())
        main0, kids0 = proc_cpu_s(os.getpid()), sum(proc_cpu_s(p) for p in kids)
        read0 = sum(proc_rchar(p) for p in kids) if kids else proc_rchar(os.getpid())
        t0 = time.perf_counter()
        done = used = 0
        while done < clips * max(1, workers):
            batch = consumed(next(it))
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
