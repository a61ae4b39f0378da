"""bench_loader's report: the machine it ran on, and the table of every side against its
bound."""

from __future__ import annotations

import os
import platform
import time

import simplejpeg
import torch
import webdataset as wds
from common import commit, cpu_model  # benchmarks/common.py


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
         ("v2dev", "v2 loader, resize on dev"),
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
            # the loaders against the bound with Augment, the readers and the loader that
            # leaves the resize to the device against the bare bound
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
    print("x bound (CPU): the loaders against the bound + Augment; the readers, the loader "
          "that leaves the resize to the device (data.resize_on=device: its cost there is not "
          "the loader's) and the bound + Augment against the bare bound")  # fmt: skip
    print("goals (issue 16): CPU per clip <= 1.5x the bound; bytes read <= 2x the bytes used; "
          "the v2 loader no slower than v1")  # fmt: skip
