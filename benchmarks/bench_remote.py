"""``avprep shard`` reading from (and writing to) a local S3-compatible server against the
same files on disk; the training loader reading shards from it against from disk.

    python benchmarks/bench_remote.py [--data DIR] [--clips 6] [--clip-seconds 30]
                                      [--workers 2] [--repeats 3] [--json PATH]
                                      [--parts shard,loader]

The clips are bench_shard's (``inputs.make_inputs``: 640x360 H.264 + AAC, ~1.1 Mbit/s),
uploaded once to moto's standalone S3 server (``python -m moto.server``), started here
on the loopback interface as its own process so that its CPU is counted apart. s3fs
finds it through the environment only (``AWS_ENDPOINT_URL``, test keys), as a job would.

Three commands, interleaved ``--repeats`` times, each ``python -m avprep shard ... --quiet
--workers N`` with the defaults (PyAV decoder, 10 s segments):

- disk -> disk: ``CLIPS --out TMP``, the reference;
- s3 -> disk: ``s3://bucket/clips --out TMP``: decoding streams from ranged GETs;
- s3 -> s3: ``s3://bucket/clips --out s3://bucket/out-K``: shards staged locally and
  uploaded whole, manifest parts likewise, the rank's lease renewed.

Throughput is seconds of video per wall second; the ratio is each against disk -> disk
in the same repeat. Each command is then run again on its finished output (nothing to
do): start-up, listing, the lease and the manifest read, the cost that does not grow
with the inputs. The server's CPU seconds during each run are reported (on a 2-core
machine it competes with the workers: a real object store runs elsewhere). Loopback
has no network latency or bandwidth limit: this measures avprep's own overhead of
reading and writing through fsspec, not a network. The benchmark measures; it never
asserts.

The loader part (``--parts loader``): bench_loader's inputs (``--loader-videos`` synthetic
640x360 videos of 20 s, sharded with 8 samples a shard, schema v2; cached in
``--loader-data``, bench_loader's own folder by default), the shard folder
uploaded to the server, and ``cmac_core.data.loader.train_stream`` (the ``base``
DataConfig, batches of ``--batch-size``, ``--loader-workers`` worker processes) timed as
bench_loader times it, sides interleaved in each repeat:

- disk (seek): the shard folder, read as training reads it (the seek reader: tar headers,
  the json, the clip's frames and columns);
- disk (stream): the same folder with ``seek=False`` (each sample read whole by
  webdataset's tar stream): what reading from the server does, on disk;
- s3 (seek, B): ``s3://bucket/loader-shards/``: listed, counted from its manifest parts,
  checked in ranged reads, and read by the seek reader in ranged GETs
  (``remote_read.RangedFile``) of at least B (``AVPREP_REMOTE_SEEK_BLOCK_BYTES``): 64 KiB
  fetches little more than a clip needs (headers and json, its frames, its columns) in
  more requests, 8 MiB a whole shard in one;
- s3 (stream): the same URL with ``seek=False``: each sample streamed whole through
  ``remote_read.gopen`` (8 MiB ranged GETs), what the loader did before.

Clips per wall second after ``--warmup-clips`` per worker, over ``--loader-clips`` per
worker; the ratio is against disk (seek) and against disk (stream) in the same repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import commit, cpu_model  # noqa: E402
from inputs import duration_s, make_inputs  # noqa: E402

BUCKET = "avprep-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(cmd: list[str], env: dict, server: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the command's tree, server CPU seconds)."""
    before = os.times()
    s0 = _cpu_s(server)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu, _cpu_s(server) - s0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "avprep-bench")
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--clip-seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--parts", default="shard,loader", help="shard, loader, or both.")
    ap.add_argument("--loader-data", type=Path,
                    default=Path(tempfile.gettempdir()) / "avprep-bench-loader",
                    help="bench_loader's inputs (made there once, or reused).")  # fmt: skip
    ap.add_argument("--loader-videos", type=int, default=24)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup-clips", type=int, default=64, help="Per worker, not timed.")
    ap.add_argument("--loader-clips", type=int, default=256, help="Timed clips per worker.")
    args = ap.parse_args()
    parts = args.parts.split(",")

    if "shard" in parts:
        clip_dir, _ = make_inputs(args.data, clips=args.clips, clip_s=args.clip_seconds, long_s=1)
        clips = sorted(clip_dir.glob("*.mp4"))
        video_s = sum(duration_s(c) for c in clips)
    port = _free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[dict]] = {"disk -> disk": [], "s3 -> disk": [], "s3 -> s3": []}
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        import s3fs  # noqa: PLC0415

        fs = s3fs.S3FileSystem()
        for _ in range(100):  # the server starting
            try:
                fs.mkdir(BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        if "loader" in parts:
            loader = loader_part(args, fs, server.pid)
        if "shard" not in parts:
            return
        for c in clips:
            fs.put_file(str(c), f"{BUCKET}/clips/{c.name}")
        shard = [sys.executable, "-m", "avprep", "shard", "--quiet",
                 "--workers", str(args.workers)]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(args.repeats):
                runs = {
                    "disk -> disk": [*shard, str(clip_dir), "--out", f"{tmp}/disk-{k}"],
                    "s3 -> disk": [*shard, f"s3://{BUCKET}/clips", "--out", f"{tmp}/s3-{k}"],
                    "s3 -> s3": [*shard, f"s3://{BUCKET}/clips", "--out",
                                 f"s3://{BUCKET}/out-{k}"],  # fmt: skip
                }
                for name, cmd in runs.items():
                    wall, cpu, server_cpu = _timed(cmd, env, server.pid)
                    again = _timed(cmd, env, server.pid)  # its output done: the fixed cost
                    results[name].append({"wall_s": wall, "cpu_s": cpu, "server_cpu_s": server_cpu,
                                          "done_wall_s": again[0], "done_cpu_s": again[1]})  # fmt: skip
                    print(f"repeat {k} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                          f"server {server_cpu:.1f} s CPU; nothing to do: {again[0]:.1f} s wall, "
                          f"{again[1]:.1f} s CPU", file=sys.stderr)  # fmt: skip
    finally:
        server.terminate()
        server.wait()
        if "loader" in parts:
            print_loader(loader)
            if args.json and "shard" not in parts:
                args.json.write_text(json.dumps({"loader": loader}, indent=1))

    base = results["disk -> disk"]
    print(f"\n{len(clips)} clips, {video_s:.0f} s of video, --workers {args.workers}, "
          f"{args.repeats} repeats; {cpu_model()}, {os.cpu_count()} CPUs; avprep at "
          f"{commit('avprep')}\n")  # fmt: skip
    print("| run | best wall s | median wall s | video s / wall s (best) | vs disk (per repeat, "
          "median) | CPU s (median) | S3 server CPU s (median) | nothing to do: wall s, CPU s "
          "(median) |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    summary = {}
    for name, runs in results.items():
        walls = [r["wall_s"] for r in runs]
        ratio = statistics.median(b["wall_s"] / r["wall_s"] for b, r in zip(base, runs, strict=True))
        cpu = statistics.median(r["cpu_s"] for r in runs)
        srv = statistics.median(r["server_cpu_s"] for r in runs)
        summary[name] = {"runs": runs, "ratio_vs_disk": ratio}
        done_wall = statistics.median(r["done_wall_s"] for r in runs)
        done_cpu = statistics.median(r["done_cpu_s"] for r in runs)
        print(f"| {name} | {min(walls):.1f} | {statistics.median(walls):.1f} | "
              f"{video_s / min(walls):.1f} | {ratio:.2f}x | {cpu:.1f} | {srv:.1f} | "
              f"{done_wall:.1f}, {done_cpu:.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "clips": len(clips), "video_s": video_s, "workers": args.workers,
            "cpu": cpu_model(), "commit": commit("avprep"), "results": summary,
            **({"loader": loader} if "loader" in parts else {}),
        }, indent=1))  # fmt: skip


LOADER_SIDES = ("disk (seek)", "disk (stream)", "s3 (seek, 64 KiB)", "s3 (seek, 1 MiB)",
                "s3 (seek, 8 MiB)", "s3 (stream)")  # fmt: skip


def loader_part(args, fs, server: int) -> dict:
    """The training loader on the same shards from disk and from the server (module doc)."""
    import bench_loader  # noqa: PLC0415  (torch: only for this part)

    from cmac_core.config import preset  # noqa: PLC0415
    from cmac_core.data.loader import train_stream  # noqa: PLC0415

    _, shard_dir, _ = bench_loader.make_inputs(args.loader_data, videos=args.loader_videos,
                                               video_s=20.0)  # fmt: skip
    for f in sorted(shard_dir.rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"{BUCKET}/loader-shards/{f.relative_to(shard_dir).as_posix()}")
    url = f"s3://{BUCKET}/loader-shards/"
    cfg = preset("base").data
    w = args.loader_workers
    specs = {"disk (seek)": (str(shard_dir), True, None),
             "disk (stream)": (str(shard_dir), False, None),
             "s3 (seek, 64 KiB)": (url, True, 64 << 10), "s3 (seek, 1 MiB)": (url, True, 1 << 20),
             "s3 (seek, 8 MiB)": (url, True, 8 << 20), "s3 (stream)": (url, False, None)}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in LOADER_SIDES}
    for k in range(args.repeats):
        for name in LOADER_SIDES:
            spec, seek, block = specs[name]
            if block:  # the seek reader's least GET (the loader's workers inherit it)
                os.environ["AVPREP_REMOTE_SEEK_BLOCK_BYTES"] = str(block)
            s0 = _cpu_s(server)
            t0 = time.perf_counter()
            stream = train_stream(spec, cfg, batch_size=args.batch_size, workers=w, seed=k,
                                  seek=seek)  # fmt: skip
            start_s = time.perf_counter() - t0  # listing, counting, checking the shards
            r = bench_loader.timed(stream.loader, w, warmup=args.warmup_clips,
                                   clips=args.loader_clips)  # fmt: skip
            r.update(start_s=start_s, server_cpu_s=_cpu_s(server) - s0,
                     steps_per_epoch=stream.steps_per_epoch)  # fmt: skip
            runs[name].append(r)
            print(f"repeat {k} loader {name}: {r['clips'] / r['wall_s']:.1f} clips/s, "
                  f"{1e3 * r['cpu_s'] / r['clips']:.1f} CPU ms/clip, start {start_s:.2f} s, "
                  f"server {r['server_cpu_s']:.1f} s CPU", file=sys.stderr)  # fmt: skip
    shards = sorted(shard_dir.glob("*.tar"))
    return {"videos": args.loader_videos, "shards": len(shards),
            "shard_mb": sum(p.stat().st_size for p in shards) / 1e6, "workers": w,
            "batch_size": args.batch_size, "repeats": args.repeats, "cpu": cpu_model(),
            "commit": commit("cmac_core"), "loadavg": os.getloadavg()[0], "runs": runs}  # fmt: skip


def print_loader(res: dict) -> None:
    print(f"\ntraining loader: {res['videos']} x 20 s videos, {res['shards']} shards "
          f"({res['shard_mb']:.0f} MB, schema v2); base DataConfig, batch {res['batch_size']}, "
          f"{res['workers']} loader workers, {res['repeats']} repeats; {res['cpu']}; cmac_core "
          f"at {res['commit']}; load average {res['loadavg']:.1f}\n")  # fmt: skip
    print("| side | clips/s (median) | vs disk (seek) | vs disk (stream) | CPU ms/clip | "
          "start s (list, count, check) | S3 server CPU s | steps/epoch |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    runs = res["runs"]
    rate = {n: [r["clips"] / r["wall_s"] for r in rs] for n, rs in runs.items()}
    for name, rs in runs.items():
        vs = [statistics.median(a / b for a, b in zip(rate[name], rate[ref], strict=True))
              for ref in ("disk (seek)", "disk (stream)")]  # fmt: skip
        cpu = statistics.median(1e3 * r["cpu_s"] / r["clips"] for r in rs)
        print(f"| {name} | {statistics.median(rate[name]):.1f} | {vs[0]:.2f}x | {vs[1]:.2f}x | "
              f"{cpu:.1f} | {statistics.median(r['start_s'] for r in rs):.2f} | "
              f"{statistics.median(r['server_cpu_s'] for r in rs):.1f} | "
              f"{rs[0]['steps_per_epoch']} |")  # fmt: skip


if __name__ == "__main__":
    main()
