"""``avprep shard`` reading from (and writing to) a local S3-compatible server against the
same files on disk.

    python benchmarks/bench_remote.py [--data DIR] [--clips 6] [--clip-seconds 30]
                                      [--workers 2] [--repeats 3] [--json PATH]

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
    args = ap.parse_args()

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
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
