"""bench_shard's report: the table of runs, ratios against the bounds, and the labels."""

from __future__ import annotations

from pathlib import Path

from inputs import FPS

ROLES = ("worker", "parent", "forkserver", "ffmpeg", "ffprobe", "resource_tracker")


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


KIND_LABELS = {  # main() adds "shard_<decoder>" for each further --decoders entry
    "decode_only": "decode-only",
    "decode_resize": "decode+resize",
    "frames": "pyav frames",  # the first decoder's frame reader
    "shard": "avprep shard",  # with the first of --decoders
}


def print_report(res: dict) -> None:
    m, inp = res["machine"], res["inputs"]
    print(f"{m['cpu']}, {m['cores']} cores; {m['ffmpeg']}; avprep {m['commit']}; {m['date']}")
    if inp.get("given"):
        what = f"{inp['clips']} copies of {', '.join(Path(g).name for g in inp['given'])}"
        what += f" ({inp['video_seconds']:.0f} s of video)"
    else:
        what = f"{inp['clips']} x {inp['clip_seconds']:g} s {inp['size']} {FPS} fps H.264+AAC"
    print(
        f"inputs: {what} ({inp['mbit_per_s']:.2f} Mbit/s); {res['repeats']} runs each, interleaved"
    )
    print()
    print(f"{'':>7}  {'':<22}  {'video s per s':>15}  {'CPU s per':>10}")
    print(f"{'workers':>7}  {'':<22}  {'best':>7}  {'median':>6}  {'video s':>10}")
    for row in res["by_workers"]:
        for kind, label in KIND_LABELS.items():
            k = row[kind]
            print(
                f"{row['workers']:>7}  {label:<22}  {k['best_video_s_per_s']:>7.1f}  "
                f"{k['median_video_s_per_s']:>6.1f}  {k['cpu_s_per_video_s']:>10.4f}"
            )
    print()
    print("ratios of throughput (best run, median run) and of CPU per video second")
    print(f"{'workers':>7}  {'':<44}  {'best':>6} {'median':>6} {'CPU':>6}")
    pairs = res["pairs"]
    for row in res["by_workers"]:
        for kind, ref in pairs:
            r = row["ratios"][f"{kind}/{ref}"]
            label = f"{KIND_LABELS[kind]} / {KIND_LABELS[ref]}"
            print(
                f"{row['workers']:>7}  {label:<44}  {r['best']:>6.2f} {r['median']:>6.2f} "
                f"{r['cpu']:>6.2f}"
            )
    for sc in res["scaling"]:
        parts = ", ".join(f"{label} {sc[k]:.2f}x" for k, label in KIND_LABELS.items())
        print(f"scaling {sc['workers']} vs {sc['base']} workers (best runs): {parts}")
    loads = [r["other_cores"] for row in res["by_workers"] for k in KIND_LABELS
             for r in row[k]["runs"]]  # fmt: skip
    print(f"other processes' load during the runs: {min(loads):.2f}..{max(loads):.2f} cores")
    for n, st in res.get("startup", {}).items():
        print(
            f"start-up ({n} workers, {n} x 1 s clips): {st['wall_s']:.2f} s of the best shard run's "
            f"{st['shard_wall_s']:.2f} s; without it, shard / decode-only "
            f"{st['ratio_without_startup']:.2f}"
        )
    print()
    print("peak memory of the avprep shard process tree, --workers 1 (VmHWM; private RssAnon)")
    for mem in (res.get("memory_clips"), res["memory_long"]):
        if not mem:
            continue
        peak, anon = mem["peak_rss_bytes"], mem["peak_anon_bytes"]
        roles = ", ".join(f"{r} {mb(peak[r])} ({mb(anon[r])})" for r in ROLES if r in peak)
        print(f"  {mem['input']:>16}: {roles}; whole tree at once {mb(mem['peak_tree_rss_bytes'])}")


REFS = ("decode_only", "decode_resize", "frames")


def ratio(a: dict, b: dict) -> dict:
    """How ``a`` compares with the reference ``b``: throughput (best, median) and CPU."""
    return {
        "best": a["best_video_s_per_s"] / b["best_video_s_per_s"],
        "median": a["median_video_s_per_s"] / b["median_video_s_per_s"],
        "cpu": b["cpu_s_per_video_s"] / a["cpu_s_per_video_s"],
    }
