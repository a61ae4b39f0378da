"""Shard schema v2 (issue 15: one set of columns for Hugging Face datasets; issue 16: a
training reader that reads only a clip's bytes): written by default, read by datasets,
webdataset + the one-call helper, the seek reader (same clips as the stream), v1 still read,
hostile v2 fields recorded as damage."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import run_cli, samples_of, write_tar

from avprep import schema
from avprep.read_sample import convert_shard, decode_sample
from cmac_core.config import DataConfig, preset
from cmac_core.data.loader import LoaderTimeoutError, TimedLoader, train_stream
from cmac_core.data.seek import ShardClips
from cmac_core.data.shards import SharedEpoch
from cmac_core.data.stages import ClipWindow, SafeDecode

ENV = {"OMP_NUM_THREADS": "1"}


def tars(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar"))


@pytest.fixture(scope="module")
def v1_shards(demo_shards, tmp_path_factory) -> Path:
    """The demo shards rewritten as schema v1 (the same JPEG bytes and spectrograms)."""
    out = tmp_path_factory.mktemp("v1") / "shards"
    out.mkdir()
    for src in tars(demo_shards):
        convert_shard(src, out / src.name, version=1)
    return out


# -- the writer -----------------------------------------------------------------------


def test_v2_is_written_by_default(demo_shards):
    for path in tars(demo_shards):
        for key, members in samples_of(path).items():
            assert list(members) == ["json", "jpgs", "spec.npy"], key  # no --keep-audio: no flac
            meta = json.loads(members["json"])
            assert meta["schema_version"] == schema.SCHEMA_VERSION == 2
            off = meta["frame_offsets"]
            assert len(off) == len(meta["frame_times"]) + 1 == meta["n_frames"] + 1
            assert off[0] == 0 and off[-1] == len(members["jpgs"])
            assert all(members["jpgs"][a : a + 2] == b"\xff\xd8" for a in off[:-1])  # JPEG starts
            spec = np.load(io.BytesIO(members["spec.npy"]), allow_pickle=False)
            assert spec.dtype == np.float16 and spec.flags.f_contiguous
            assert spec.shape == (meta["spec"]["n_mels"], meta["n_columns"])
            assert meta["spec_min"] == float(spec.min())
            assert meta["label"] == "" and json.loads(meta["media_json"])["decoder"]


# -- readers users bring ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory) -> Path:
    """Two 12 s videos as 10 s segments and 2 s tails, one with a label and extra columns,
    one without, one video per shard (so the first shard alone shows no label)."""
    from avprep.synth import make_demo_video

    root = tmp_path_factory.mktemp("mixed")
    a = make_demo_video(root / "a.mp4", duration_s=12.0, size=(192, 144))
    b = make_demo_video(root / "b.mp4", duration_s=12.0, size=(192, 144), color="blue")
    (root / "m.jsonl").write_text(
        json.dumps({"path": str(a), "id": "a_nolabel"}) + "\n"
        + json.dumps({"path": str(b), "id": "b_dog", "label": "dog", "weight": 0.5}) + "\n"
    )  # fmt: skip
    out = root / "shards"
    run_cli("shard", str(root / "m.jsonl"), "--out", str(out), "--shard-max-samples", "2",
            "--workers", "1", "--quiet")  # fmt: skip
    return out


def test_datasets_reads_a_folder_of_v2_shards_as_one_table(mixed_shards, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in tars(mixed_shards)]
    d = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                              cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert d.num_rows == 4 and set(d.column_names) == {
        "json",
        "jpgs",
        "spec.npy",
        "__key__",
        "__url__",
    }
    assert d.features["jpgs"].dtype == "binary"
    lengths = sorted(len(r["frame_times"]) for r in d["json"])
    assert lengths == [32, 32, 160, 160]  # 2 s tails and 10 s segments, one set of columns
    labels = sorted(r["label"] for r in d["json"])
    assert labels == ["", "", "dog", "dog"]
    stream = {s["__key__"]: s for s in wds.WebDataset(files, shardshuffle=False, empty_check=False)}
    for row in d:
        frames, spec, meta = decode_sample(row)
        frames2, spec2, meta2 = decode_sample(stream[row["__key__"]])
        assert frames.dtype == np.uint8 and frames.shape[0] == len(meta["frame_times"])
        assert spec.dtype == np.float32 and spec.shape == (128, meta["n_columns"])
        assert np.array_equal(frames, frames2) and np.array_equal(spec, spec2)
        want = {"weight": 0.5} if meta["video_id"] == "b_dog" else {}
        assert meta["extra"] == want and meta2["label"] == meta["label"]


def test_helper_decodes_v1_and_v2_samples_to_the_same_arrays(demo_shards, v1_shards):
    urls = [str(p) for p in tars(demo_shards)]
    v2 = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}
    urls1 = [str(p) for p in tars(v1_shards)]
    n = 0
    for s in wds.WebDataset(urls1, shardshuffle=False, empty_check=False):
        assert "f000.jpg" in s and "jpgs" not in s
        f1, s1, m1 = decode_sample(s)
        f2, s2, m2 = decode_sample(v2[s["__key__"]])
        assert np.array_equal(f1, f2) and np.array_equal(s1, s2)
        for name in ("frame_times", "start_s", "end_s", "media", "extra", "label", "spec"):
            assert m1[name] == m2[name], name
        n += 1
    assert n == len(v2)
    # decoded by webdataset first (.decode()): the spectrogram array, JPEGs left as bytes in v2
    decoded = next(iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")))
    frames, spec, meta = decode_sample(decoded)
    assert frames.shape[0] == len(meta["frame_times"]) and spec.shape[1] == meta["n_columns"]


def test_convert_round_trip_keeps_every_byte_of_frames_and_spectrogram(
    demo_shards, v1_shards, tmp_path
):
    src = tars(demo_shards)[0]
    back = tmp_path / src.name
    convert_shard(tars(v1_shards)[0], back, version=2)
    a, b = samples_of(src), samples_of(back)
    assert list(a) == list(b)
    for key in a:
        assert a[key]["jpgs"] == b[key]["jpgs"] and a[key]["spec.npy"] == b[key]["spec.npy"]
        assert json.loads(a[key]["json"]) == json.loads(b[key]["json"])


# -- the training reader ------------------------------------------------------------------


def _batches(shards: Path, cfg: DataConfig, *, seek: bool, n: int, workers: int = 0, seed: int = 5):
    stream = train_stream(str(shards), cfg, batch_size=4, workers=workers, seed=seed, seek=seek)
    it = iter(stream.loader)
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        for name in ("video", "spec", "start_s", "jitter", "spec_shifted"):
            if name in x or name in y:
                assert torch.equal(x[name], y[name]), name


@pytest.mark.parametrize("how", ["tiny", "audio 2 s", "3 clips per sample", "sync pairs"])
def test_seek_reader_gives_the_clips_of_the_stream_for_the_same_seed(demo_shards, how):
    cfg = preset("tiny").data
    cfg = {"tiny": cfg,
           "audio 2 s": DataConfig(**{**cfg.__dict__, "audio_seconds": 2.0}),  # windows padded
           "3 clips per sample": DataConfig(**{**cfg.__dict__, "clips_per_sample": 3}),
           "sync pairs": DataConfig(**{**cfg.__dict__, "sync_shift_min_s": 0.3})}[how]  # fmt: skip
    seek = _batches(demo_shards, cfg, seek=True, n=8)
    _same(seek, _batches(demo_shards, cfg, seek=False, n=8))
    _same(seek, _batches(demo_shards, cfg, seek=True, n=8))  # and the same again: deterministic


def test_seek_reader_with_loader_workers_is_deterministic_and_matches_the_stream(demo_shards):
    cfg = preset("tiny").data
    seek = _batches(demo_shards, cfg, seek=True, n=6, workers=2)
    _same(seek, _batches(demo_shards, cfg, seek=False, n=6, workers=2))


def _clips(shards: Path, cfg: DataConfig, *, seek: bool) -> tuple[ShardClips, list[dict]]:
    window = ClipWindow(cfg.clip_frames, audio_seconds=cfg.audio_seconds, seed=0, rank=0,
                        epoch=SharedEpoch(0))  # fmt: skip
    stage = ShardClips(window, clips_per_sample=cfg.clips_per_sample, seek=seek)
    return stage, list(stage(iter({"url": str(p)} for p in tars(shards))))


def test_seek_reader_reads_at_most_twice_the_bytes_a_clip_uses(demo_shards):
    cfg = preset("base").data  # 8 frames, 0.5 s of audio
    stage, clips = _clips(demo_shards, cfg, seek=True)
    assert stage.samples_seeked == len(clips) > 0 and not any("__error__" in c for c in clips)
    used = sum(sum(len(j) for j in c["jpegs"]) + c["spec"].nbytes for c in clips)
    shard_bytes = sum(p.stat().st_size for p in tars(demo_shards))
    assert stage.bytes_read <= 2 * used, (stage.bytes_read, used)
    assert stage.bytes_read < shard_bytes / 3  # the rest of each sample is never read
    k3, clips3 = _clips(
        demo_shards, DataConfig(**{**cfg.__dict__, "clips_per_sample": 3}), seek=True
    )
    assert len(clips3) == 3 * len(clips) and k3.samples_seeked == stage.samples_seeked
    by_key: dict[str, set] = {}
    for c in clips3:
        by_key.setdefault(c["key"], set()).add(c["window"].first_frame)
    assert any(len(firsts) > 1 for firsts in by_key.values())  # windows drawn anew


def test_steps_per_epoch_reads_each_sample_once_with_several_clips(demo_shards):
    cfg = preset("tiny").data
    n = train_stream(str(demo_shards), cfg, batch_size=2, workers=0).n_samples
    one = train_stream(str(demo_shards), cfg, batch_size=2, workers=0).steps_per_epoch
    three = DataConfig(**{**cfg.__dict__, "clips_per_sample": 3})
    assert one == n // 2
    assert (
        train_stream(str(demo_shards), three, batch_size=2, workers=0).steps_per_epoch == 3 * n // 2
    )


def test_v1_shards_are_read_as_a_stream_with_the_same_clips(demo_shards, v1_shards):
    cfg = preset("tiny").data
    stage, clips = _clips(v1_shards, cfg, seek=True)
    assert stage.samples_seeked == 0 and clips  # v1: the stream, as before
    _, clips2 = _clips(demo_shards, cfg, seek=True)
    assert [c["key"] for c in clips] == [c["key"] for c in clips2]
    for a, b in zip(clips, clips2, strict=True):
        assert a["jpegs"] == b["jpegs"] and np.array_equal(a["spec"], b["spec"])


@pytest.mark.slow
def test_v1_shards_still_train_and_embed(v1_shards, tiny_ckpt, tmp_path):
    run_cli("pretrain", str(v1_shards), "--out", str(tmp_path / "run"), "--config", "tiny",
            "--steps", "2", env=ENV)  # fmt: skip
    assert (tmp_path / "run" / "last.pt").exists()
    emb = tmp_path / "emb"
    run_cli("embed", str(v1_shards), "--ckpt", str(tiny_ckpt), "--out", str(emb), "--device", "cpu",
            env=ENV)  # fmt: skip
    import pyarrow.parquet as pq

    keys = pq.read_table(emb).column("key").to_pylist()
    n = sum(len(samples_of(p)) for p in tars(v1_shards))
    assert len(keys) == len(set(keys)) == n


# -- hostile v2 fields ------------------------------------------------------------------------


def _hostile(members: dict[str, bytes], kind: str) -> dict[str, bytes]:
    meta = json.loads(members["json"])
    off = meta["frame_offsets"]
    change = {
        "offsets go back": {"frame_offsets": [0, off[2], off[1], *off[3:]]},
        "offsets past the member": {"frame_offsets": [*off[:-1], off[-1] + 100]},
        "offsets short of the member": {"frame_offsets": [*off[:-1], off[-1] - 1]},
        "one offset too few": {"frame_offsets": off[:-1]},
        "offset 2**60": {"frame_offsets": [*off[:-1], 2**60]},
        "offset negative": {"frame_offsets": [-5, *off[1:]]},
        "offsets not numbers": {"frame_offsets": ["0"] * len(off)},
        "offsets an object": {"frame_offsets": {"a": 1}},
        "n_frames wrong": {"n_frames": meta["n_frames"] + 1},
        "n_columns wrong": {"n_columns": meta["n_columns"] + 1},
        "spec_min 1e300": {"spec_min": 1e300},
        "media_json not an object": {"media_json": "[1, 2]"},
        "extra_json not json": {"extra_json": "{"},
        "label null": {"label": None},
    }
    if kind == "frames member missing":
        return {k: v for k, v in members.items() if k != "jpgs"}
    return {**members, "json": json.dumps({**meta, **change[kind]}).encode()}


HOSTILE = ["offsets go back", "offsets past the member", "offsets short of the member",
           "one offset too few", "offset 2**60", "offset negative", "offsets not numbers",
           "offsets an object", "n_frames wrong", "n_columns wrong", "spec_min 1e300",
           "media_json not an object", "extra_json not json", "label null",
           "frames member missing"]  # fmt: skip


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_v2_fields_are_one_line_sample_errors(demo_shards, kind):
    key, members = next(iter(samples_of(tars(demo_shards)[0]).items()))
    bad = _hostile(members, kind)
    for read in (lambda: SafeDecode()({"__key__": key, "__url__": "x.tar", **bad}),
                 lambda: decode_sample({"__key__": key, **bad})):  # fmt: skip
        with pytest.raises(schema.SampleError) as caught:
            read()
        text = str(caught.value)
        assert "\n" not in text and len(text) < 300 and key in text, text


def test_hostile_v2_samples_are_damage_to_the_seek_reader_and_the_stream(demo_shards, tmp_path):
    good = samples_of(tars(demo_shards)[0])
    keys = list(good)
    evil = {}
    for i, kind in enumerate(HOSTILE):
        key = keys[i % len(keys)]
        new = f"evil{i:02d}_0000"
        meta = json.loads(good[key]["json"])
        members = {**good[key], "json": json.dumps({**meta, "key": new}).encode()}
        evil[new] = _hostile(members, kind)
    evil.update(good)
    shards = tmp_path / "evil"
    shards.mkdir()
    write_tar(shards / "evil.tar", evil)
    cfg = preset("tiny").data
    for seek in (True, False):
        stage, out = _clips(shards, cfg, seek=seek)
        markers = [c for c in out if "__error__" in c]
        assert sorted(m["__sample__"] for m in markers) == sorted(
            repr(k) for k in evil if k.startswith("evil")
        )
        assert all(m["__kind__"] == "sample" and "\n" not in m["__error__"] for m in markers)
        assert sorted(c["key"] for c in out if "__error__" not in c) == sorted(good)
        assert stage.samples_seeked == (len(good) if seek else 0)
    run = tmp_path / "run"  # no shuffle buffer: the first batch carries every marker
    proc = run_cli("pretrain", str(shards), "--out", str(run), "--config", "tiny", "--steps", "2",
                   "--set", "data.shuffle_buffer=0", check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"evil.tar: {len(HOSTILE)} damaged samples skipped" in proc.stderr, proc.stderr[-2000:]


def test_a_v2_shard_cut_inside_a_member_ends_with_a_shard_marker(demo_shards, tmp_path):
    shard = tars(demo_shards)[0]
    with tarfile.open(shard) as tar:  # a frames member after the first sample's
        inside = [
            m for m in tar.getmembers() if m.name.endswith("." + schema.FRAMES) and m.size > 2048
        ][1]
    at = inside.offset_data + inside.size // 2 // 512 * 512  # past its header, before its end
    assert inside.offset_data < at < inside.offset_data + inside.size
    cut = tmp_path / "cut.tar"  # ends in zero blocks: looks whole
    cut.write_bytes(shard.read_bytes()[:at] + b"\0" * 1024)
    stage, out = _clips(tmp_path, preset("tiny").data, seek=True)
    assert out and out[-1]["__kind__"] == "shard" and "__error__" in out[-1]
    assert stage.samples_seeked >= 1


# -- no silent hangs: the loader's timeout -------------------------------------------------


class _Stalls(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(1)
        time.sleep(30)
        yield torch.zeros(1)


def test_a_stalled_loader_worker_ends_the_run_in_one_line():
    loader = torch.utils.data.DataLoader(_Stalls(), batch_size=None, num_workers=1, timeout=1)
    it = iter(TimedLoader(loader, 1))
    next(it)
    with pytest.raises(LoaderTimeoutError) as caught:  # not the batch 30 s later
        next(it)
    assert "data.loader_timeout_s" in str(caught.value) and "\n" not in str(caught.value)


def test_seek_reader_reads_long_names_and_hands_compressed_shards_to_the_stream(
    demo_shards, tmp_path
):
    good = samples_of(tars(demo_shards)[0])
    key, members = next(iter(good.items()))
    long_key = "v" * 110 + "_0000"  # a name past ustar's 100 bytes: a pax header before it
    meta = {**json.loads(members["json"]), "key": long_key, "video_id": "v" * 110}
    folder = tmp_path / "long"
    folder.mkdir()
    write_tar(
        folder / "long.tar", {long_key: {**members, "json": json.dumps(meta).encode()}, **good}
    )
    stage, out = _clips(folder, preset("tiny").data, seek=True)
    assert [c["key"] for c in out] == [long_key, *good] and stage.samples_seeked == len(good) + 1
    import gzip

    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "a.tar").write_bytes(gzip.compress(tars(demo_shards)[0].read_bytes()))
    stage, out = _clips(packed, preset("tiny").data, seek=True)
    assert [c["key"] for c in out] == list(good) and stage.samples_seeked == 0


def test_resuming_a_v1_output_folder_says_so_in_one_line(demo_shards, tmp_path):
    """A folder sharded by an avprep that wrote v1 is not extended with v2 shards."""
    out = tmp_path / "out"
    out.mkdir()
    videos = demo_shards.parent / "videos"
    args = ("shard", str(videos), "--out", str(out), "--segment-seconds", "2", "--workers", "1")
    run_cli(*args, "--quiet")
    state = out / ".avprep" / "shard-config.json"
    config = json.loads(state.read_text())
    state.write_text(json.dumps({**config, "schema_version": 1}))
    before = sorted(p.name for p in out.rglob("*"))
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "holds schema v1 shards and this avprep writes v2" in proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
