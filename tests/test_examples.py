"""The numbered scripts in examples/ run as documented."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import read_manifest, read_shards

from avprep.discover import discover, partition
from avprep.synth import make_clapper

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_01_shard_and_read(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "01_shard_and_read.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ok=2 segments=2" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("a_0000", "b_0000"))]
    assert len(lines) == 2
    assert "(171, 128, 3)" in lines[1]  # the rotated video is stored in display orientation


def test_02_slurm_array_covers_every_input_once(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(5):
        make_clapper(videos / f"clip{i}.mp4", duration_s=2.0, flashes_s=(0.5,))
    out = tmp_path / "shards"
    env = {
        **os.environ,
        "AVPREP": f"{shlex.quote(sys.executable)} -m avprep",
        "SLURM_CPUS_PER_TASK": "1",
    }
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)
    script = ["bash", str(EXAMPLES / "02_slurm_shard_array.sbatch"), str(videos), str(out), "3"]
    owner = {i.video_id: r for r in range(3) for i in partition(discover([str(videos)]), r, 3)}
    lost = max(owner.values())  # a task with inputs (the split hashes the paths)
    # sbatch --array=0-2, where task `lost` is lost; then its resubmission sbatch --array=`lost`
    tasks = [(t, 3) for t in range(3) if t != lost] + [(lost, 1)]
    for task, count in tasks:
        task_env = {**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count),
                    "SLURM_ARRAY_TASK_MIN": str(task if count == 1 else 0)}  # fmt: skip
        proc = subprocess.run(script, env=task_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    rows = read_manifest(out).to_pylist()
    assert Counter(r["video_id"] for r in rows) == {f"clip{i}": 1 for i in range(5)}
    assert {r["video_id"]: r["rank"] for r in rows} == owner
    assert len(read_shards(out)) == 5
