"""avprep embed / localize: every key exactly once, resumable, deterministic, readable by DuckDB."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from conftest import read_shards, run_cli
from test_pretrain import _rewrite_shard

from cmac_core.checkpoint import sha256

ENV = {"OMP_NUM_THREADS": "1"}
PART = re.compile(r"part-\d{5}-\d{5}\.parquet")


def table(emb: Path):
    return ds.dataset(sorted(str(p) for p in emb.glob("*.parquet")), format="parquet").to_table()


def videos_of(emb: Path) -> Path:
    """The per-video table: beside EMB_DIR, not in it (readers take EMB_DIR whole)."""
    return emb.with_name(f"{emb.name}.videos.parquet")


def as_dict(t) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    keys = t.column("key").to_pylist()
    v = np.asarray(t.column("video_embedding").to_pylist(), np.float32)
    a = np.asarray(t.column("audio_embedding").to_pylist(), np.float32)
    return {k: (v[i], a[i]) for i, k in enumerate(keys)}


@pytest.fixture(scope="module")
def embedded(demo_shards, tiny_ckpt, tmp_path_factory):
    emb = tmp_path_factory.mktemp("emb") / "emb"
    run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(emb), "--per-video",
            "--device", "cpu", env=ENV)  # fmt: skip
    return emb


def test_one_row_per_sample_with_explicit_schema(embedded, demo_shards, tiny_ckpt):
    t = table(embedded)
    keys = t.column("key").to_pylist()
    samples = read_shards(demo_shards)
    assert sorted(keys) == sorted(samples) and len(set(keys)) == len(keys)
    schema = pq.read_schema(next(embedded.glob("part-00000-*.parquet")))
    assert str(schema.field("video_embedding").type) == "fixed_size_list<element: float>[32]"
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["checkpoint_sha256"] == sha256(tiny_ckpt) and meta["checkpoint_step"] == "4"
    assert meta["method"] == "cmac" and meta["schema_version"] == "2"  # what avprep writes
    assert json.loads(meta["config"])["model"]["embed_dim"] == 32
    emb = as_dict(t)
    rows = {r["key"]: r for r in t.to_pylist()}
    for key, (v, a) in emb.items():
        assert abs(np.linalg.norm(v) - 1) < 1e-4 and abs(np.linalg.norm(a) - 1) < 1e-4
        m, row = samples[key]["json"], rows[key]
        assert (row["video_id"], row["segment"], row["start_s"]) == (
            m["video_id"],
            m["segment"],
            m["start_s"],
        )
    videos = pq.read_table(videos_of(embedded))
    assert videos.num_rows == len({s["json"]["video_id"] for s in samples.values()})
    assert sum(videos.column("n_segments").to_pylist()) == len(keys)


def test_features_are_the_heads_inputs_beside_the_embeddings(demo_shards, tiny_ckpt, tmp_path):
    """With one clip per segment, each row's embedding is exactly the projection head of its
    stored feature: the feature is the pooled backbone output the head took."""
    from cmac_core.embed.frozen import Frozen

    emb = tmp_path / "emb"
    run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(emb), "--per-video",
            "--clips-per-segment", "1", "--device", "cpu", env=ENV)  # fmt: skip
    t = table(emb)
    schema = pq.read_schema(next(emb.glob("part-*.parquet")))
    assert str(schema.field("video_feature").type) == "fixed_size_list<element: float>[64]"
    assert schema.metadata[b"table_version"] == b"2"
    model = Frozen.load(tiny_ckpt, torch.device("cpu")).model
    for name, head in (("video", model.video_head), ("audio", model.audio_head)):
        f = torch.tensor(t.column(f"{name}_feature").to_pylist())
        z = torch.tensor(t.column(f"{name}_embedding").to_pylist())
        assert not torch.allclose(f.norm(dim=1), torch.ones(len(f)))  # features: not normalised
        with torch.no_grad():
            assert torch.allclose(head(f), z, atol=1e-5)
    videos = pq.read_table(videos_of(emb))
    assert {"video_feature", "audio_feature"} <= set(videos.column_names)


def test_the_folder_holds_the_table_parts_only(embedded):
    """EMB_DIR is the segment table and nothing else (no lock, no per-video table, no
    temporary file, hidden or not): readers take it whole (tests/test_readers.py)."""
    assert all(PART.fullmatch(p.name) for p in embedded.iterdir()), list(embedded.iterdir())
    assert videos_of(embedded).exists()
    assert (embedded.parent / f".{embedded.name}.avprep" / "lock-00000").exists()


def test_a_folder_of_the_older_layout_resumes_into_the_new_one(embedded, demo_shards, tiny_ckpt,
                                                              tmp_path):  # fmt: skip
    """An older avprep kept its locks, temporaries and per-video table inside EMB_DIR: a run
    moves the per-video table beside the folder, drops the idle locks (any rank's) and
    temporaries, and resumes: nothing to embed, the table unchanged."""
    old = tmp_path / "old"
    shutil.copytree(embedded, old)
    (old / "_per_video").mkdir()
    shutil.copy(videos_of(embedded), old / "_per_video" / "videos.parquet")
    for name in (".lock-00000", ".lock-00003", ".part-00000-00007.parquet.tmp"):
        (old / name).write_bytes(b"")
    proc = run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(old),
                   "--device", "cpu", "--workers", "1", env=ENV)  # fmt: skip
    assert f"0 segments embedded ({len(table(embedded))} already done)" in proc.stdout
    assert all(PART.fullmatch(p.name) for p in old.iterdir()), list(old.iterdir())
    assert pq.read_table(videos_of(old)).equals(pq.read_table(videos_of(embedded)))
    assert as_dict(table(old)).keys() == as_dict(table(embedded)).keys()


def test_duckdb_cosine_query_returns_the_query_key_first(embedded):
    duckdb = pytest.importorskip("duckdb")
    query = sorted(as_dict(table(embedded)))[3]
    rows = duckdb.sql(
        f"""
        WITH q AS (SELECT video_embedding AS e FROM '{embedded}/*.parquet' WHERE key = '{query}')
        SELECT t.key, list_cosine_similarity(t.video_embedding, q.e) AS sim
        FROM '{embedded}/*.parquet' t, q ORDER BY sim DESC LIMIT 3
        """
    ).fetchall()
    assert rows[0][0] == query and rows[0][1] == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_identical_across_runs(embedded, demo_shards, tiny_ckpt, tmp_path):
    again = tmp_path / "again"
    run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(again), "--device", "cpu",
            "--workers", "1", "--batch-size", "5", env=ENV)  # fmt: skip
    first, second = as_dict(table(embedded)), as_dict(table(again))
    assert first.keys() == second.keys()
    for k in first:
        np.testing.assert_allclose(first[k][0], second[k][0], atol=1e-5)
        np.testing.assert_allclose(first[k][1], second[k][1], atol=1e-5)


def test_clip_packer_makes_full_batches_in_order():
    from cmac_core.embed import ClipPacker

    packer = ClipPacker(4)
    counts = [3, 5, 1, 7]
    clips = torch.arange(sum(counts))
    batches, i = [], 0
    for k in counts:  # clip j of the stream is a [1, 2] video and a [1] spec, both valued j
        video, spec = clips[i : i + k, None, None].expand(k, 1, 2).clone(), clips[i : i + k, None]
        batches += [(v.clone(), a.clone(), r) for v, a, r in packer.add(video, spec)]
        i += k
    batches += [(v.clone(), a.clone(), r) for v, a, r in packer.flush()]
    assert [tuple(v.shape) for v, _, _ in batches] == [(4, 1, 2)] * 4
    assert [r for *_, r in batches] == [4, 4, 4, 4]
    assert not list(packer.add(clips[:2, None, None].expand(2, 1, 2), clips[:2, None]))
    v, a, r = next(packer.flush())
    assert r == 2 and v[:, 0, 0].tolist() == [0, 1, 1, 1]  # padded by repeating the last clip
    assert torch.cat([v[:r, 0, 0] for v, _, r in batches]).tolist() == clips.tolist()
    assert torch.cat([a[:r, 0] for _, a, r in batches]).tolist() == clips.tolist()


@pytest.mark.slow
def test_two_processes_cover_every_key_once(demo_shards, tiny_ckpt, tmp_path):
    emb = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29527",
           "-m", "avprep", "embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(emb),
           "--device", "cpu", "--workers", "1"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = table(emb).column("key").to_pylist()
    assert sorted(keys) == sorted(read_shards(demo_shards)) and len(keys) == len(set(keys))
    assert {p.name.split("-")[1] for p in emb.glob("part-*.parquet")} == {"00000", "00001"}
    assert f"embed: {len(keys)} segments embedded (0 already done)" in proc.stdout
    maps = tmp_path / "maps"  # localize splits the shards too; rank 0 writes the page
    cmd = [*cmd[: cmd.index("embed")], "localize", str(demo_shards), "--ckpt", str(tiny_ckpt),
           "--out", str(maps), "--device", "cpu"]  # fmt: skip
    cmd[cmd.index("29527")] = "29528"
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.stem for p in maps.glob("*[0-9].npy")} == set(keys)
    assert (maps / "index.html").read_text().count("<figure>") == len(keys)
    assert f"localize: {len(keys)} attention maps" in proc.stdout


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_table(embedded, demo_shards, tiny_ckpt, tmp_path):
    emb = tmp_path / "killed"
    code = (
        "from cmac_core.embed import embed\n"
        f"embed({str(demo_shards)!r}, {str(tiny_ckpt)!r}, {str(emb)!r}, device='cpu', workers=1,"
        " batch_size=2, rows_per_part=2)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, **ENV}, start_new_session=True
    )
    deadline = time.time() + 300
    while (
        len(list(emb.glob("part-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(table(emb).column("key")) if list(emb.glob("part-*.parquet")) else 0
    assert 0 < partial < len(read_shards(demo_shards))
    proc = run_cli(
        "embed",
        str(demo_shards),
        "--ckpt",
        str(tiny_ckpt),
        "--out",
        str(emb),
        "--device",
        "cpu",
        env=ENV,
    )
    assert f"({partial} already done)" in proc.stdout
    assert all(PART.fullmatch(p.name) for p in emb.iterdir())  # a kill leaves parts only
    assert not list(emb.with_name(f".{emb.name}.avprep").glob("*.tmp"))  # resume cleans up
    resumed, clean = as_dict(table(emb)), as_dict(table(embedded))
    assert len(table(emb).column("key")) == len(resumed) == len(clean)
    for k in clean:
        np.testing.assert_allclose(resumed[k][0], clean[k][0], atol=1e-5)


def test_localize_writes_maps_overlays_and_a_page(demo_shards, tiny_ckpt, tmp_path):
    out = tmp_path / "maps"
    run_cli("localize", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(out), "--limit", "3",
            "--device", "cpu", env=ENV)  # fmt: skip
    maps = sorted(m for m in out.glob("*[0-9].npy"))
    assert len(maps) == 3 and len(list(out.glob("*.alpha.npy"))) == 3
    assert len(list(out.glob("*.gradcam.npy"))) == 3
    from PIL import Image

    for m in maps:
        att, alpha = np.load(m), np.load(m.with_suffix(".alpha.npy"))
        cam = np.load(m.with_suffix(".gradcam.npy"))
        meta = json.loads(m.with_suffix(".json").read_text())
        frame_w, frame_h = read_shards(demo_shards)[meta["key"]]["json"]["frame_size"]
        assert att.shape == alpha.shape == cam.shape == (frame_h, frame_w) and np.all(att >= 0)
        assert np.all(alpha >= 0) and not np.allclose(alpha, att)  # two maps, not one twice
        assert np.all(cam >= 0) and not np.allclose(cam, att) and not np.allclose(cam, alpha)
        assert Image.open(m.with_suffix(".png")).size[0] > 0
    page = (out / "index.html").read_text()
    assert page.count("<figure>") == 3 and all(m.stem in page for m in maps)
    assert page.count("map: beta_v (audio-guided attention)") == 3  # a CMAC checkpoint's own map


def _expect_one_line_error(proc, text: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr[-2000:]


def test_bad_checkpoints_are_named(demo_shards, tiny_ckpt, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x17" + bytes(2046))  # reads as pickle protocol 23: torch warns
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    future = tmp_path / "future.pt"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    torch.save({**ckpt, "format_version": 99}, future)
    for path, text in ((corrupt, "not a readable checkpoint"), (foreign, "not a cmac_core checkpoint"),
                       (future, "format version 99"), (tmp_path / "missing.pt", "checkpoint not found")):  # fmt: skip
        emb = tmp_path / f"emb-{path.stem}"
        proc = run_cli(
            "embed", str(demo_shards), "--ckpt", str(path), "--out", str(emb), check=False, env=ENV
        )
        _expect_one_line_error(proc, text)
        assert not emb.exists()


def test_other_schema_version_and_empty_shard_set(demo_shards, tiny_ckpt, tmp_path):
    old = tmp_path / "v99"
    old.mkdir()

    def bump(name, data):
        if name.endswith(".json"):
            data = json.dumps({**json.loads(data), "schema_version": 99}).encode()
        return {name: data}

    for src in sorted(demo_shards.glob("*.tar"))[:2]:
        _rewrite_shard(src, old / src.name, bump)
    emb = tmp_path / "emb-v99"
    proc = run_cli("embed", str(old), "--ckpt", str(tiny_ckpt), "--out", str(emb), "--device", "cpu",
                   check=False, env=ENV)  # fmt: skip
    _expect_one_line_error(proc, "schema version 99")
    assert not list(emb.glob("*.parquet"))
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(
        "embed", str(empty), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "e2"), check=False
    )
    _expect_one_line_error(proc, "no .tar shards")
    assert not (tmp_path / "e2").exists()


def _mid_member(tar: Path) -> int:
    """A byte offset halfway into the data of the member that spans the tar's middle: a cut there
    stops the read inside a member (a cut on a header boundary would read as a clean, shorter
    tar whose last sample lacks members)."""
    with tarfile.open(tar) as tf:
        members = [m for m in tf.getmembers() if m.size > 0]
    half = tar.stat().st_size // 2
    m = next(m for m in members if m.offset_data + m.size >= half)
    return m.offset_data + m.size // 2


def test_a_damaged_shard_is_named_and_the_rest_embedded(demo_shards, tiny_ckpt, tmp_path):
    """A shard cut in half: its readable samples and every other shard's are embedded, the
    shard is named on stderr, exit 1; the same shard named twice is read once."""
    shards = tmp_path / "shards"
    shards.mkdir()
    tars = sorted(demo_shards.glob("*.tar"))
    for t in tars:
        os.link(t, shards / t.name)
    damaged = shards / tars[0].name
    data = tars[0].read_bytes()
    damaged.unlink()
    damaged.write_bytes(data[: _mid_member(tars[0])])
    emb = tmp_path / "emb"
    spec = f"{shards}::{shards / tars[1].name}"
    proc = run_cli("embed", spec, "--ckpt", str(tiny_ckpt), "--out", str(emb), "--device", "cpu",
                   "--workers", "2", check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"shard {damaged} could not be read to its end" in proc.stderr
    keys = table(emb).column("key").to_pylist()
    assert len(keys) == len(set(keys))
    whole = read_shards(demo_shards)
    intact = {k for k, s in whole.items() if s["shard"] != tars[0].name}
    assert intact < set(keys) <= set(whole)  # every intact key, and some of the damaged shard's


def test_bad_values_and_a_busy_folder_are_one_line(demo_shards, tiny_ckpt, tmp_path):
    from avprep.outdir import try_lock

    emb = tmp_path / "emb"
    base = ["embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(emb)]
    for extra, text in ((["--batch-size", "0"], "--batch-size must be >= 1"),
                        (["--workers", "-1"], "--workers must be >= 0"),
                        (["--workers", "100000"], "--workers must be >= 0 and <= 256, got 100000"),
                        (["--batch-size", "100000000"], "--batch-size must be >= 1 and <= 65536"),
                        (["--clips-per-segment", "-1"], "--clips-per-segment must be >= 1"),
                        (["--clips-per-segment", str(10**9)], "--clips-per-segment must be >= 1 and <= 1000"),
                        (["--device", "gpu"], "'gpu' is not one of auto, cpu, cuda, cuda:N")):  # fmt: skip
        _expect_one_line_error(run_cli(*base, *extra, check=False, env=ENV), text)
    state = tmp_path / ".emb.avprep"  # beside EMB_DIR: the ranks' locks
    state.mkdir()
    fd = try_lock(state / "lock-00000")  # another embed of rank 0 into this folder
    try:
        proc = run_cli(*base, "--device", "cpu", check=False, env=ENV)
        _expect_one_line_error(proc, "rank 0 is already embedding into")
    finally:
        os.close(fd)
    emb.mkdir(exist_ok=True)
    fd = try_lock(emb / ".lock-00000")  # an older avprep, whose locks were inside EMB_DIR
    try:
        proc = run_cli(*base, "--device", "cpu", check=False, env=ENV)
        _expect_one_line_error(proc, "an older avprep is embedding into")
    finally:
        os.close(fd)
    run_cli(*base, "--device", "cpu", "--clips-per-segment", "2", env=ENV)
    proc = run_cli(*base, "--device", "cpu", check=False, env=ENV)  # the default covers segments
    _expect_one_line_error(proc, "made with --clips-per-segment 2, not 0")
    proc = run_cli(*base, "--attention-maps", str(emb / "maps"), check=False, env=ENV)
    _expect_one_line_error(proc, "is inside --out")
    mismatched = tmp_path / "mismatched.pt"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["config"]["model"]["embed_dim"] = 7
    torch.save(ckpt, mismatched)
    proc = run_cli("embed", str(demo_shards), "--ckpt", str(mismatched), "--out",
                   str(tmp_path / "e3"), check=False, env=ENV)  # fmt: skip
    _expect_one_line_error(proc, "the weights are not of this config's model")


def test_localize_refuses_another_checkpoints_folder(demo_shards, tiny_ckpt, tmp_path):
    maps = tmp_path / "maps"
    run_cli("localize", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(maps),
            "--device", "cpu", "--limit", "2", env=ENV)  # fmt: skip
    other = tmp_path / "other.pt"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    torch.save({**ckpt, "step": ckpt["step"] + 1}, other)
    proc = run_cli("localize", str(demo_shards), "--ckpt", str(other), "--out", str(maps),
                   "--device", "cpu", check=False, env=ENV)  # fmt: skip
    _expect_one_line_error(proc, "holds attention maps of another checkpoint")
    proc = run_cli("localize", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(maps),
                   "--limit", "-1", check=False, env=ENV)  # fmt: skip
    _expect_one_line_error(proc, "--limit must be >= 1")
    assert len(list(maps.glob("*[0-9].npy"))) == 2


# -- hostile and faulty inputs: keys met twice, non-finite outputs, a full or read-only --out


def _embed_cli(spec: str, ckpt: Path, emb: Path, *extra: str, prefix=None):
    return run_cli("embed", spec, "--ckpt", str(ckpt), "--out", str(emb), "--device", "cpu",
                   "--workers", "1", *extra, check=False, env=ENV, prefix=prefix)  # fmt: skip


def test_non_finite_embeddings_are_damaged_samples_never_vectors(demo_shards, tmp_path):
    """A model whose head has a NaN bias (saved through checkpoint.save): no vector is
    written, every sample is named as a damaged sample skipped, no shard as cut short."""
    from cmac_core import checkpoint
    from cmac_core.config import preset
    from cmac_core.models import build

    cfg = preset("tiny")
    model = build("cmac", cfg.model)
    with torch.no_grad():
        model.audio_head.mlp[2].bias[3] = float("nan")
    ckpt = checkpoint.save(tmp_path / "nan.pt", model=model, config=cfg.to_dict(), step=1, epoch=0)
    emb = tmp_path / "emb"
    proc = _embed_cli(str(demo_shards), ckpt, emb)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "0 segments embedded" in proc.stdout and not list(emb.glob("*.parquet"))
    lines = [
        x
        for x in proc.stderr.splitlines()
        if "damaged sample" in x and x.startswith("avprep: shard ")
    ]
    per_shard = {s["shard"] for s in read_shards(demo_shards).values()}
    assert len(lines) == len(per_shard), proc.stderr
    assert all("its embedding is not finite (NaN or inf)" in x for x in lines)
    assert "could not be read to its end" not in proc.stderr
    counts = [int(x.split(": ", 2)[2].split()[0]) for x in lines]
    assert sum(counts) == len(read_shards(demo_shards))


def test_a_full_disk_and_a_read_only_out_are_one_line(demo_shards, tiny_ckpt, tmp_path):
    """Nothing partial is left under a final name, no temporary file either; the line says
    which folder and why."""
    from conftest import on_read_only, on_small_disk

    ro = tmp_path / "ro"
    ro.mkdir()
    proc = _embed_cli(str(demo_shards), tiny_ckpt, ro / "emb", prefix=on_read_only(ro))
    _expect_one_line_error(proc, f"cannot write to {ro / 'emb'}: Read-only file system")
    assert not (ro / "emb").exists()
    proc = _embed_cli(str(demo_shards), tiny_ckpt, ro, prefix=on_read_only(ro))
    _expect_one_line_error(proc, f"cannot write to {ro}: Read-only file system")
    full = tmp_path / "full"  # an 8 KiB disk; what is left on it is listed before it goes
    then_list = ["sh", "-c", f'"$@"; rc=$?; echo left: $(ls -A {full}); exit $rc', "sh"]
    proc = _embed_cli(str(demo_shards), tiny_ckpt, full, "--per-video",
                      prefix=on_small_disk(full, 8) + then_list)  # fmt: skip
    _expect_one_line_error(proc, f"cannot write to {full}: No space left on device")
    assert proc.stdout.strip().splitlines()[-1] == "left:", proc.stdout  # the lock is beside


def test_more_windows_than_a_segment_can_start_give_each_start_once():
    """Windows start on distinct frames: asking for more is each start once, without
    spreading a billion of them first (8 GB a sample)."""
    from cmac_core.data.evaluation import window_starts

    assert window_starts(160, 8, 10**9) == window_starts(160, 8, 153) == list(range(153))
    assert window_starts(8, 8, 10**9) == window_starts(4, 8, 5) == [0]
