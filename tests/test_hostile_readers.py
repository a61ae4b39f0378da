"""Shards from strangers, read by pretrain, localize and inspect: damage is recorded, never
fatal, never a traceback, never a write outside --out, never a script in a page."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import on_read_only, on_small_disk, run_cli, samples_of, write_tar

from avprep import schema
from cmac_core.data.stages import SafeDecode

ENV = {"OMP_NUM_THREADS": "1"}
HANG_S = 240  # a run that hangs or spins is stopped here and fails the test


def rekey(members: dict[str, bytes], key: str, **meta_changes) -> dict[str, bytes]:
    """A sample's members with its json's key (and any other fields) changed."""
    meta = json.loads(members["json"])
    meta.update(key=key, **meta_changes)
    return {**members, "json": json.dumps(meta).encode()}


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def huge_header_npy() -> bytes:
    """A .npy whose header claims 10^6 x 10^6 float16 (2 TB) over 8 bytes of data."""
    header = "{'descr': '<f2', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8


def first_shard(demo_shards: Path) -> Path:
    return sorted(demo_shards.glob("*.tar"))[0]


# -- one rule for every reader: what a damaged sample is ---------------------------------


def _damaged(members: dict[str, bytes], kind: str) -> tuple[str, dict[str, bytes]]:
    meta = json.loads(members["json"])
    key = meta["key"]
    spec = np.load(io.BytesIO(members["spec.npy"]))
    if kind == "bad json":
        return key, {**members, "json": b'{"schema_version": 1, "key": '}
    if kind == "deep json":
        return key, {**members, "json": b"[" * 100_000 + b"]" * 100_000}
    if kind == "fps 0":
        return key, rekey(members, key, fps=0)
    if kind == "hop_s 0":
        return key, rekey(members, key, spec={**meta["spec"], "hop_s": 0})
    if kind == "frame_times strings":
        return key, rekey(members, key, frame_times=["a"] * len(meta["frame_times"]))
    if kind == "spec of rank 1":
        return key, {**members, "spec.npy": npy(spec.ravel())}
    if kind == "spec header claims 2 TB":
        return key, {**members, "spec.npy": huge_header_npy()}
    if kind == "spec with inf":
        return key, {**members, "spec.npy": npy(np.full_like(spec, np.inf))}
    if kind == "frame missing":  # v2: every frame is in one member
        return key, {k: v for k, v in members.items() if k != schema.FRAMES}
    if kind == "corrupt jpeg":
        bad = b"\xff\xd8 not a jpeg"
        offsets = meta["frame_offsets"]
        grow = len(bad) - offsets[1]
        jpgs = bad + members[schema.FRAMES][offsets[1] :]
        meta["frame_offsets"] = [0] + [o + grow for o in offsets[1:]]
        return key, {**members, "json": json.dumps(meta).encode(), schema.FRAMES: jpgs}
    if kind == "key with a path":
        return "../../victim_0000", rekey(members, "../../victim_0000")
    if kind == "json names another key":
        return key, rekey(members, "other_0000")
    if kind == "key with a newline":  # the same key to a reader that strips it: a duplicate
        return key + "\n", rekey(members, key + "\n")
    if kind == "video_id and segment make another key":  # per-video rows group by video_id
        return key, rekey(members, key, video_id="another_video")
    if kind == "spec beyond float16":  # finite, but no shard holds it: overflows the model
        return key, {**members, "spec.npy": npy(np.full_like(spec, 1e30, dtype=np.float32))}
    raise AssertionError(kind)


DAMAGE = ["bad json", "deep json", "fps 0", "hop_s 0", "frame_times strings", "spec of rank 1",
          "spec header claims 2 TB", "spec with inf", "frame missing", "key with a path",
          "json names another key", "key with a newline", "video_id and segment make another key",
          "spec beyond float16"]  # fmt: skip


@pytest.mark.parametrize("kind", DAMAGE)
def test_every_kind_of_damaged_sample_is_one_sample_error(demo_shards, kind):
    members = next(iter(samples_of(first_shard(demo_shards)).values()))
    key, bad = _damaged(members, kind)
    raw = {"__key__": key, "__url__": "x.tar", **bad}
    with pytest.raises(schema.SampleError) as caught:
        SafeDecode()(raw)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_a_key_is_the_whole_text_never_a_prefix():
    assert schema.is_key("clip_0000") and not schema.is_key("clip_0000\n")
    assert not schema.is_key("clip_0000\nx") and not schema.is_key("clip_0000 ")
    with pytest.raises(ValueError):
        schema.split_key("clip_0000\n")


def test_a_spectrogram_beyond_float16_is_refused_where_columns_are_read(demo_shards):
    """The seek reader's columns (``ranges.FileSpec``) hold the same rule as whole members."""
    from avprep.read_sample import spec_values

    ok = np.full((4, 3), 65504.0, np.float32)
    assert spec_values("k_0000", ok) is ok
    for bad, said in ((np.float32(1e30), "beyond float16"), (np.inf, "NaN or inf"),
                      (np.nan, "NaN or inf")):  # fmt: skip
        a = ok.copy()
        a[2, 1] = bad
        with pytest.raises(schema.SampleError, match=said):
            spec_values("k_0000", a)


def test_a_valid_sample_passes_and_its_spectrogram_is_not_copied(demo_shards):
    members = next(iter(samples_of(first_shard(demo_shards)).values()))
    meta = json.loads(members["json"])
    s = SafeDecode()({"__key__": meta["key"], "__url__": "x.tar", **members})
    assert s["spec"].shape == (meta["spec"]["n_mels"], meta["n_columns"])
    assert np.array_equal(s["spec"], np.load(io.BytesIO(members["spec.npy"])))
    assert len(s["jpegs"]) == len(meta["frame_times"])


# -- localize: keys name files, pages show data ---------------------------------------


def test_localize_never_writes_outside_out_and_escapes_its_page(demo_shards, tiny_ckpt, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.json").write_text("mine")
    samples = samples_of(first_shard(demo_shards))
    keys = list(samples)
    script = "<script>alert(1)</script>"
    evil = {
        "../victim/config": rekey(samples[keys[0]], "../victim/config"),
        f"{tmp_path}/abs/x_0000": rekey(samples[keys[1]], f"{tmp_path}/abs/x_0000"),
        "../../x_0000": rekey(samples[keys[2]], "../../x_0000"),
        "<img src=x onerror=alert(1)>_0000": rekey(samples[keys[0]], "<img src=x onerror=alert(1)>_0000"),
        keys[3]: rekey(samples[keys[3]], keys[3], label=script, source=f"<img src=y onerror=alert(2)>{script}"),
    }  # fmt: skip
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "evil.tar", evil)
    links = shards / "links.tar"  # frames that are links, to a file outside and to a member
    with tarfile.open(links, "w") as tar:
        for key, kind in ((keys[1], tarfile.SYMTYPE), (keys[2], tarfile.LNKTYPE)):
            for suffix, data in samples[key].items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                if suffix == schema.FRAMES:
                    info.type, info.linkname = (
                        kind,
                        "/etc/passwd" if kind == tarfile.SYMTYPE else f"{key}.json",
                    )
                else:
                    info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    before = sorted(p for p in tmp_path.rglob("*") if "maps" not in p.parts)
    out = tmp_path / "maps"
    proc = run_cli("localize", str(shards), "--ckpt", str(tiny_ckpt), "--out", str(out),
                   "--device", "cpu", check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        "evil.tar: 4 damaged samples skipped" in proc.stderr and "is not a valid key" in proc.stderr
    )
    assert (
        "links.tar: 2 damaged samples skipped" in proc.stderr
        and f"members missing: {schema.FRAMES}" in proc.stderr
    )
    assert (victim / "config.json").read_text() == "mine"
    assert sorted(p for p in tmp_path.rglob("*") if "maps" not in p.parts) == before
    assert sorted(p.name for p in out.glob("*.npy")) == [
        f"{keys[3]}.alpha.npy", f"{keys[3]}.gradcam.npy", f"{keys[3]}.npy"]  # fmt: skip
    page = (out / "index.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<img src=y" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and f'src="{keys[3]}.png"' in page


# -- pretrain: damaged shards are left out, damaged samples skipped, nothing hangs -----------


def _unreadable(kind: str, good: Path, path: Path) -> Path:
    data = good.read_bytes()
    content = {
        "zero bytes": b"",
        "not a tar": os.urandom(8192),
        "truncated": data[: len(data) // 2],
        "truncated at a block": data[: len(data) // 1024 * 512],
        "empty tar": b"\0" * 10240,
    }[kind]
    path.write_bytes(content)
    return path


UNREADABLE = ["zero bytes", "not a tar", "truncated", "truncated at a block", "empty tar"]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_pretrain_on_nothing_readable_says_so_in_one_line(demo_shards, tmp_path, kind):
    shards = tmp_path / "shards"
    shards.mkdir()
    _unreadable(kind, first_shard(demo_shards), shards / "shard-0.tar")
    _unreadable(kind, sorted(demo_shards.glob("*.tar"))[1], shards / "shard-1.tar")
    proc = run_cli("pretrain", str(shards), "--out", str(tmp_path / "run"), "--config", "tiny",
                   "--steps", "4", check=False, env=ENV, timeout=HANG_S)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "no readable shard: all 2 are damaged or not tars" in lines[0]
    assert not (tmp_path / "run").exists()


def test_pretrain_leaves_out_damaged_shards_and_skips_damaged_samples(demo_shards, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    good = sorted(demo_shards.glob("*.tar"))
    for src in good[1:]:
        (shards / src.name).write_bytes(src.read_bytes())
    for kind in UNREADABLE:
        _unreadable(kind, good[0], shards / f"bad-{kind.replace(' ', '-')}.tar")
    samples = samples_of(good[0])
    damaged = dict(
        _damaged(members, kind) for members, kind in zip(samples.values(), DAMAGE, strict=False)
    )
    write_tar(shards / "damaged.tar", damaged)
    proc = run_cli("pretrain", str(shards), "--out", str(tmp_path / "run"), "--config", "tiny",
                   "--steps", "6", "--workers", "1", check=False, env=ENV, timeout=HANG_S)  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "pretrain: 6 steps" in proc.stdout
    for kind in UNREADABLE:
        assert f"bad-{kind.replace(' ', '-')}.tar" in proc.stderr
    assert f"damaged.tar: {len(damaged)} damaged samples skipped" in proc.stderr


def test_one_pretrain_run_per_folder(demo_shards, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "avprep", "pretrain", str(demo_shards), "--out", str(run),
         "--config", "tiny", "--steps", "100000", "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **ENV},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + HANG_S
        while not (run / "metrics.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, (
                "the first run did not start"
            )
            time.sleep(0.2)
        proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny",
                       "--steps", "100000", "--resume", check=False, env=ENV)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert f"{run} is in use: another pretrain run" in lines[0]
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny",
                   "--steps", "1", "--resume", check=False, env=ENV)  # fmt: skip
    assert "in use" not in proc.stderr  # the lock went with the killed run


# -- full disks and read-only folders: one line, nothing partial ---------------------------


def test_pretrain_and_localize_into_a_read_only_folder_say_one_line(
    demo_shards, tiny_ckpt, tmp_path
):
    ro = tmp_path / "ro"
    cases = {
        "pretrain": ("pretrain", str(demo_shards), "--out", str(ro / "run"), "--config", "tiny", "--steps", "2"),
        "localize": ("localize", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(ro / "maps")),
    }  # fmt: skip
    for args in cases.values():
        proc = run_cli(*args, "--device", "cpu", check=False, env=ENV, prefix=on_read_only(ro))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
        assert "Read-only file system" in lines[0]
    assert list(ro.iterdir()) == []


def _on_full_disk(folder: Path, size_kb: int, args: list[str], tmp_path: Path):
    """Run avprep ARGS with a ``size_kb`` disk at ``folder``; (exit code, stderr, the files
    left in ``folder``, listed before the disk goes away)."""
    listing = tmp_path / "listing.txt"
    script = f'"$@"; rc=$?; find "{folder}" -type f > "{listing}"; exit $rc'
    proc = subprocess.run([*on_small_disk(folder, size_kb), "sh", "-c", script, "sh",
                           sys.executable, "-m", "avprep", *args],
                          capture_output=True, text=True, env={**os.environ, **ENV}, timeout=HANG_S)  # fmt: skip
    files = [Path(p) for p in listing.read_text().split()] if listing.exists() else []
    return proc.returncode, proc.stderr, files


def test_localize_on_a_full_disk_says_one_line_and_leaves_no_partial_file(
    demo_shards, tiny_ckpt, tmp_path
):
    out = tmp_path / "maps"
    rc, stderr, files = _on_full_disk(out, 400, ["localize", str(demo_shards), "--ckpt", str(tiny_ckpt),
                                                "--out", str(out), "--device", "cpu"], tmp_path)  # fmt: skip
    lines = stderr.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and "No space left on device" in lines[0], stderr[-2000:]
    maps = {p.stem for p in files if p.name.endswith(tuple(f"{d}.npy" for d in "0123456789"))}
    assert maps, "the disk held no map at all: make it larger"
    assert not [p for p in files if p.name.endswith(".tmp")]
    for key in maps:  # a key's .npy comes last: every key with one has all five files
        have = {p.name for p in files if p.name.split(".")[0] == key}
        assert have == {f"{key}.png", f"{key}.json", f"{key}.alpha.npy", f"{key}.gradcam.npy",
                        f"{key}.npy"}  # fmt: skip


def test_pretrain_on_a_full_disk_says_one_line_and_leaves_no_partial_file(demo_shards, tmp_path):
    run = tmp_path / "run"
    rc, stderr, files = _on_full_disk(run, 256, ["pretrain", str(demo_shards), "--out", str(run),
                                                 "--config", "tiny", "--steps", "4", "--device", "cpu"],
                                      tmp_path)  # fmt: skip
    lines = stderr.strip().splitlines()
    assert rc != 0 and "Traceback" not in stderr, stderr[-2000:]
    assert "cannot write the step 4 checkpoint" in lines[-1] and "No space left" in lines[-1]
    assert not [p for p in files if p.suffix in (".pt", ".tmp")]


# -- inspect ----------------------------------------------------------------------------


def test_inspect_draws_around_a_damaged_sample(demo_shards, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest").mkdir()
    for src in demo_shards.glob("*.tar"):
        samples = samples_of(src)
        samples = {k: (_damaged(m, "spec header claims 2 TB")[1] if i == 0 else m)
                   for i, (k, m) in enumerate(samples.items())}  # fmt: skip
        write_tar(shards / src.name, samples)
    for part in (demo_shards / "manifest").glob("*.parquet"):
        (shards / "manifest" / part.name).write_bytes(part.read_bytes())
    png = tmp_path / "sheet.png"
    proc = run_cli("inspect", str(shards), "--png", str(png), "--samples", "18", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "left out of the contact sheet" in proc.stderr and "(1000000, 1000000)" in proc.stderr
    assert png.stat().st_size > 10_000


def test_frames_decode_into_one_array_and_other_sizes_are_one_sample_error():
    """decode_jpegs decodes each JPEG into its slot of one array (sized from the first
    frame's header): the same pixels as decoding each alone; a later frame larger or
    smaller than the first, corrupt, or no frame at all is one SampleError."""
    import simplejpeg
    from PIL import Image

    from avprep.read_sample import decode_jpegs

    def jpeg(h: int, w: int, seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG")
        return out.getvalue()

    frames = [jpeg(48, 64, seed) for seed in range(5)]
    alone = np.stack([simplejpeg.decode_jpeg(j, colorspace="RGB") for j in frames])
    assert np.array_equal(decode_jpegs("k_0000", frames), alone)
    for bad in ([frames[0], jpeg(96, 128, 9)], [frames[0], jpeg(24, 32, 9)],
                [frames[0], b"\xff\xd8 not a jpeg"], []):  # fmt: skip
        with pytest.raises(schema.SampleError, match="a frame does not decode"):
            decode_jpegs("k_0000", bad)


# -- members no reader may expand ----------------------------------------------------------


def sparse_shard(demo_shards: Path, folder: Path, *, expanded: int = 64 << 20) -> Path:
    """A shard (written by GNU tar, ``--sparse``) of the first shard's samples whose first
    sample's spectrogram is a sparse file: a few KB in the shard, ``expanded`` bytes read."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    members = folder / "members"
    members.mkdir(parents=True)
    names = []
    for i, (key, sample) in enumerate(samples_of(first_shard(demo_shards)).items()):
        for suffix, data in sample.items():
            path = members / f"{key}.{suffix}"
            path.write_bytes(data)
            if i == 0 and suffix == schema.SPEC:
                with open(path, "r+b") as f:
                    f.truncate(expanded)  # a hole after the real bytes
            names.append(path.name)
    shard = folder / "shards" / first_shard(demo_shards).name
    shard.parent.mkdir()
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(shard), "-C", str(members),
                    *names], check=True)  # fmt: skip
    if shard.stat().st_size > expanded // 2:
        pytest.skip("this file system reports no holes: tar stored the file whole")
    shutil.copytree(demo_shards / "manifest", shard.parent / "manifest")  # an output folder
    for other in sorted(demo_shards.glob("*.tar"))[1:]:
        shutil.copyfile(other, shard.parent / other.name)
    return shard


def test_a_sparse_member_ends_its_shard_as_damage_before_it_is_read(demo_shards, tmp_path):
    """A stranger's shard of 0.7 MB whose spectrogram member expands to gigabytes of zeros
    made embed, localize and inspect read all of it (3.6 GB of memory for a 3 GB member):
    every reader now refuses a sparse member by its header (``schema.member_problem``)."""
    from cmac_core.data.damage import ShardSamples, is_marker
    from cmac_core.data.ranges import CountingFile
    from cmac_core.data.seek import tar_members

    shard = sparse_shard(demo_shards, tmp_path)
    got = list(ShardSamples()(iter([{"url": str(shard)}])))
    assert len(got) == 1 and is_marker(got[0]) and got[0]["__kind__"] == "shard"
    assert "sparse file" in got[0]["__error__"]
    with pytest.raises(tarfile.ReadError, match="sparse file"):  # the seek reader's headers
        list(tar_members(CountingFile(str(shard))))
    png = tmp_path / "sheet.png"
    proc = run_cli("inspect", str(shard.parent), "--png", str(png), "--samples", "18", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "sparse file" in proc.stderr


def test_members_no_reader_uses_are_never_read(demo_shards, tmp_path):
    """A stranger's sample with extra members (``{key}.pad0`` ...): within the per-member
    cap each, but kept in memory they added up (a 14 MB gzip shard with three 1 GiB members
    took embed to 3.9 GB). Readers skip them unread: the samples read are the same."""
    from cmac_core.data.damage import ShardSamples

    src = first_shard(demo_shards)
    samples = samples_of(src)
    padded = {k: {**m, **{f"pad{i}": b"\0" * 4096 for i in range(3)}} if n == 0 else m
              for n, (k, m) in enumerate(samples.items())}  # fmt: skip
    shard = write_tar(tmp_path / src.name, padded)
    got = list(ShardSamples()(iter([{"url": str(shard)}])))
    assert [s["__key__"] for s in got] == list(samples)
    for s in got:
        assert set(s) - {"__key__", "__url__"} == set(samples[s["__key__"]]), s.keys()
