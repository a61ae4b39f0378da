"""avprep embed: a key met twice in one run (in a shard, a copied shard, two datasets, two
ranks) is written once and named with its shards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import read_shards, run_cli
from test_embed import _embed_cli, table, videos_of

from avprep.writer import tar_member

ENV = {"OMP_NUM_THREADS": "1"}


def _collision_line(proc) -> str:
    """The one line naming keys met twice; exit 1; no traceback from our code (torchrun
    prints its own when a rank exits 1)."""
    lines = [x for x in proc.stderr.splitlines() if "sample keys met more than once" in x]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert not re.search(r'File ".*/(avprep|cmac_core)/', proc.stderr), proc.stderr[-3000:]
    return lines[0]


def test_a_copied_shard_and_a_key_twice_in_a_shard_are_written_once(
    demo_shards, tiny_ckpt, tmp_path
):
    """One shard copied under another name, and a shard holding its first sample again at
    its end: each key once in the table, the keys and their shards named in one line, exit 1,
    and the rerun (resume) says the same and writes nothing."""
    tars = sorted(demo_shards.glob("*.tar"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for t in tars:
        os.link(t, shards / t.name)
    copy = shards / f"copy-of-{tars[0].name}"
    copy.write_bytes(tars[0].read_bytes())
    twice = shards / tars[1].name  # its first sample again after the others
    twice.unlink()
    with tarfile.open(tars[1]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    first_key = members[0][0].split(".", 1)[0]
    again = [(n, d) for n, d in members if n.split(".", 1)[0] == first_key]
    twice.write_bytes(b"".join(tar_member(n, d) for n, d in members + again) + b"\0" * 1024)
    whole = read_shards(demo_shards)
    copied = {k for k, s in whole.items() if s["shard"] == tars[0].name}
    emb = tmp_path / "emb"
    for run in range(2):
        proc = _embed_cli(str(shards), tiny_ckpt, emb, "--per-video")
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = _collision_line(proc)
        assert line.startswith(f"avprep: {len(copied) + 1} sample keys met more than once (")
        named = sorted(copied | {first_key})[0]  # the first three keys are named, with shards
        shown = line.split(f"({named} 2 times: ", 1)[1].split("; ", 1)[0]
        # Which key sorts first depends on which worker wrote which video: the copied shard's
        # keys are named with both shards, the key twice in one shard with that shard once.
        where = {str(copy), str(shards / tars[0].name)} if named in copied else {str(twice)}
        assert sorted(shown.split(", ")) == sorted(where)
        assert "; ...): " in line
        assert "separate --out folders" in line
        keys = table(emb).column("key").to_pylist()
        assert sorted(keys) == sorted(whole), run  # every key, once
        expected = "0 segments embedded" if run else f"{len(whole)} segments embedded"
        assert expected in proc.stdout
    videos = pq.read_table(videos_of(emb)).column("video_id").to_pylist()
    unsure = {whole[k]["json"]["video_id"] for k in copied | {first_key}}
    assert set(videos) == {s["json"]["video_id"] for s in whole.values()} - unsure


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> tuple[Path, Path]:
    """Two datasets whose files share names: the same two videos' names, 4 s in one, 6 s
    in the other, so the second's third segment has a key of its own."""
    from avprep.demo import make_demo_videos

    root = tmp_path_factory.mktemp("two")
    out = []
    for name, seconds in (("a", 4.0), ("b", 6.0)):
        make_demo_videos(root / name / "videos", 2, duration_s=seconds)
        run_cli("shard", str(root / name / "videos"), "--out", str(root / name / "shards"),
                "--segment-seconds", "2", "--workers", "1", "--quiet")  # fmt: skip
        out.append(root / name / "shards")
    return out[0], out[1]


def test_two_datasets_whose_files_share_names(two_datasets, tiny_ckpt, tmp_path):
    """``embed "a::b"``: b's videos have a's names, so their keys collide. Each key is in the
    table once (a's), and no per-video row merges a's video with b's extra segment."""
    a, b = two_datasets
    keys_a, keys_b = set(read_shards(a)), set(read_shards(b))
    assert keys_a < keys_b
    emb = tmp_path / "emb"
    proc = _embed_cli(f"{a}::{b}", tiny_ckpt, emb, "--per-video")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _collision_line(proc)
    assert f"avprep: {len(keys_a)} sample keys met more than once" in line
    assert str(a) in line and str(b) in line
    t = table(emb)
    assert sorted(t.column("key").to_pylist()) == sorted(keys_b)
    starts = {r["key"]: r["start_s"] for r in t.to_pylist()}
    assert all(starts[k] == read_shards(a)[k]["json"]["start_s"] for k in keys_a)
    videos = pq.read_table(videos_of(emb))
    assert videos.num_rows == 0  # both video ids name two videos: neither gets a row
    separate = tmp_path / "separate"  # what the line advises: no collision, exit 0
    assert _embed_cli(str(b), tiny_ckpt, separate, "--per-video").returncode == 0


@pytest.mark.slow
def test_a_key_on_two_ranks_is_written_once(two_datasets, tiny_ckpt, tmp_path):
    """Under torchrun rank 0 reads a's shard and rank 1 b's: the keys they share are found
    across ranks (hashes, then keys), the table keeps rank 0's rows, exit 1; the rerun
    finds them again and writes nothing."""
    a, b = two_datasets
    (shard_a,), (shard_b,) = sorted(a.glob("*.tar")), sorted(b.glob("*.tar"))
    keys_a, keys_b = set(read_shards(a)), set(read_shards(b))
    emb = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "avprep", "embed", f"{shard_a}::{shard_b}", "--ckpt", str(tiny_ckpt), "--out", str(emb),
           "--device", "cpu", "--workers", "1", "--per-video"]  # fmt: skip
    for run in range(2):
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV}
        )
        line = _collision_line(proc)
        assert f"{len(keys_a)} sample keys met more than once" in line
        assert f"2 times: {shard_a}, {shard_b}" in line, line
        t = table(emb)
        assert sorted(t.column("key").to_pylist()) == sorted(keys_b), run
        assert {p.name.split("-")[1] for p in emb.glob("part-*.parquet")} == {"00000", "00001"}
        rank1 = pq.read_table(next(emb.glob("part-00001-*.parquet"))).column("key").to_pylist()
        assert set(rank1) == keys_b - keys_a  # b's rows of shared keys were removed
        assert pq.read_table(videos_of(emb)).num_rows == 0
