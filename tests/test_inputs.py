"""Inputs: every input is accounted for, whatever it is and whatever it is called.

Broken files are recorded as failed or skipped with a reason and never stop the
run; awkward file names never reach a shell; manifests carry their columns into
every sample; folders are walked once even through symlink loops.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_manifest, read_shards, real_clip, run_cli

from avprep import schema
from avprep.synth import make_clapper, make_demo_video

SHARD = ("--segment-seconds", "2", "--workers", "2", "--quiet")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _rows(out: Path) -> dict[str, dict]:
    """Manifest rows by source; fails if an input appears twice."""
    rows = read_manifest(out).to_pylist()
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)), sources
    return {r["source"]: r for r in rows}


def _samples_by_video(out: Path) -> dict[str, list[dict]]:
    by_video: dict[str, list[dict]] = {}
    for s in read_shards(out).values():
        by_video.setdefault(s["json"]["video_id"], []).append(s["json"])
    return by_video


# -- broken inputs -----------------------------------------------------------


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A csv manifest of good, broken, skippable and missing inputs; one run into ``out``."""
    src = tmp_path_factory.mktemp("broken")
    make_demo_video(src / "good.mp4", duration_s=3, size=(160, 120))
    make_demo_video(src / "long.mp4", duration_s=4, size=(160, 120))
    _half(src / "long.mp4", src / "trunc_moov_at_end.mp4")  # ffmpeg writes the index last
    _ffmpeg("-i", str(src / "long.mp4"), "-c", "copy", "-movflags", "+faststart",
            str(src / "faststart.mp4"))  # fmt: skip
    _half(src / "faststart.mp4", src / "trunc_faststart.mp4")  # index intact, data cut
    (src / "long.mp4").unlink()
    (src / "faststart.mp4").unlink()
    (src / "text.mp4").write_text("this is not a video\n")
    (src / "empty.mp4").write_bytes(b"")
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", str(src / "tone.wav"))
    make_clapper(src / "silent.mp4", duration_s=3, audio=False)
    make_clapper(src / "short.mp4", duration_s=0.5)
    names = sorted(p.name for p in src.iterdir()) + ["missing.mp4"]
    with open(src / "inputs.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path"], *[[n] for n in names]])
    out = tmp_path_factory.mktemp("out")
    proc = run_cli("shard", str(src / "inputs.csv"), "--out", str(out), *SHARD, check=False)
    return src, out, names, proc


EXPECTED = {
    "good.mp4": ("ok", None),
    "tone.wav": ("skipped", "no_video"),
    "silent.mp4": ("skipped", "no_audio"),
    "short.mp4": ("skipped", "too_short"),
}
FAILED = ("trunc_moov_at_end.mp4", "trunc_faststart.mp4", "text.mp4", "empty.mp4", "missing.mp4")


def test_broken_inputs_are_recorded_and_the_run_succeeds(broken):
    _, out, names, proc = broken
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    assert set(rows) == set(names)
    for name, (status, reason) in EXPECTED.items():
        assert (rows[name]["status"], rows[name]["reason"]) == (status, reason), rows[name]
    for name in FAILED:
        assert rows[name]["status"] == "failed", rows[name]
        assert rows[name]["reason"], rows[name]
    assert list(out.glob("*.tmp")) == [] and list(out.glob("*/*.tmp")) == []


def test_failure_reasons_name_the_cause(broken):
    _, out, _, _ = broken
    rows = _rows(out)
    assert rows["missing.mp4"]["reason"] == "missing: no such file"
    for name in ("text.mp4", "empty.mp4", "trunc_moov_at_end.mp4", "trunc_faststart.mp4"):
        reason = rows[name]["reason"]
        assert reason.startswith("decode_error: "), reason
        assert name not in reason, reason  # the same cause reads the same for every file
        assert "\n" not in reason and len(reason) <= 300
    assert rows["text.mp4"]["reason"] == rows["empty.mp4"]["reason"]
    assert "partial file" in rows["trunc_faststart.mp4"]["reason"]


def test_skipped_rows_keep_what_probing_found(broken):
    _, out, _, _ = broken
    rows = _rows(out)
    assert abs(rows["short.mp4"]["duration_s"] - 0.5) < 0.1
    assert (rows["silent.mp4"]["video_codec"], rows["silent.mp4"]["audio_codec"]) == ("h264", None)
    assert (rows["tone.wav"]["video_codec"], rows["tone.wav"]["audio_rate_hz"]) == (None, 44100)
    assert rows["missing.mp4"]["container"] is None


def test_only_good_inputs_reach_the_shards(broken):
    _, out, _, _ = broken
    by_video = _samples_by_video(out)
    assert set(by_video) == {"good"}
    assert sorted(m["segment"] for m in by_video["good"]) == [0, 1]
    assert _rows(out)["good.mp4"]["n_segments"] == 2


def test_strict_rerun_retries_failures_and_exits_1(broken):
    """Same command with --strict on the same DIR: failures retried, recorded once."""
    src, out, names, _ = broken
    before = _rows(out)
    proc = run_cli("shard", str(src / "inputs.csv"), "--out", str(out), *SHARD, "--strict",
                   check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = _rows(out)
    assert set(rows) == set(names)
    assert rows["good.mp4"]["run"] == before["good.mp4"]["run"] == 1  # not redone
    for name in FAILED:
        assert (rows[name]["status"], rows[name]["run"]) == ("failed", 2)
    assert set(_samples_by_video(out)) == {"good"}


@pytest.mark.parametrize("decoder", ["auto", "pyav", "ffmpeg"])
def test_truncated_real_clip_is_failed(decoder, tmp_path):
    """The first half of a real clip: decoders stop part way; not an ok half video."""
    clip = real_clip("v_GGSY1Qvo990.mp4")
    trunc = _half(clip, tmp_path / "trunc_real.mp4")
    out = tmp_path / "out"
    run_cli("shard", str(trunc), "--out", str(out), *SHARD, "--decoder", decoder)
    row = _rows(out)[str(trunc)]
    assert row["status"] == "failed", row
    assert row["reason"].startswith("decode_error: "), row
    assert read_shards(out) == {}


# -- awkward names -----------------------------------------------------------

AWKWARD = (
    "with space.mp4",
    'it\'s "quoted".mp4',
    "$(touch pwned).mp4",
    "`touch pwned`; touch pwned.mp4",
    "café 日本.mp4",
    "-starts-with-dash.mp4",
    "colon:in:name.mp4",
)


def test_awkward_names_are_sharded_and_never_reach_a_shell(tmp_path):
    """Names reach ffmpeg and decord as one argv element each, never through a shell."""
    src = tmp_path / "awkward dir $(touch pwned)"
    other = tmp_path / "more 'names'"
    src.mkdir()
    other.mkdir()
    make_demo_video(tmp_path / "plain.mp4", duration_s=3, size=(160, 120))
    for name in AWKWARD:
        os.link(tmp_path / "plain.mp4", src / name)
    os.link(tmp_path / "plain.mp4", other / "$(touch pwned) 'x'.mp4")
    (tmp_path / "plain.mp4").unlink()
    manifest = other / "list $(id).jsonl"
    manifest.write_text(json.dumps({"path": AWKWARD[4], "id": "from a manifest"}) + "\n")
    os.link(src / AWKWARD[4], other / AWKWARD[4])
    out = tmp_path / "out 'é' $(touch pwned)"
    run_cli("shard", str(src), str(other / "$(touch pwned) 'x'.mp4"), str(manifest),
            "--out", str(out), *SHARD)  # fmt: skip
    rows = read_manifest(out).to_pylist()
    want = {str(src / n) for n in AWKWARD} | {str(other / "$(touch pwned) 'x'.mp4"), AWKWARD[4]}
    assert {r["source"] for r in rows} == want
    assert len(rows) == len(want)
    assert all(r["status"] == "ok" for r in rows), [(r["source"], r["reason"]) for r in rows]
    ids = {r["video_id"] for r in rows}
    assert len(ids) == len(rows) and "from_a_manifest" in ids
    samples = read_shards(out)
    assert len(samples) == 2 * len(rows)
    for key, s in samples.items():
        assert schema.split_key(key)[0] == s["json"]["video_id"]
        assert s["json"]["source"] in want
    assert not list(tmp_path.rglob("pwned"))
    assert not (Path.cwd() / "pwned").exists()


def test_names_in_another_encoding_or_with_a_colon(tmp_path):
    """A name that is not UTF-8 and one ffmpeg could read as a protocol: both sharded."""
    src = tmp_path / "in"
    src.mkdir()
    make_demo_video(src / "plain.mp4", duration_s=2, size=(160, 120))
    latin1 = os.path.join(os.fsencode(src), b"caf\xe9.mp4")  # Latin-1, not UTF-8
    os.link(src / "plain.mp4", latin1)
    os.link(src / "plain.mp4", src / "a:b.mp4")
    (src / "plain.mp4").unlink()
    out = tmp_path / "out"
    proc = run_cli("shard", str(src), "--out", str(out), *SHARD)
    assert "Traceback" not in proc.stderr
    rows = {r["source"]: r for r in read_manifest(out).to_pylist()}
    assert set(rows) == {f"{src}/caf\\xe9.mp4", f"{src}/a:b.mp4"}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert len(read_shards(out)) == 2


def test_resume_goes_by_the_input_not_its_id(clips, tmp_path):
    """Ids change when a colliding name arrives, and two folders may hold one name:
    a rerun neither redoes a committed input under a new id nor skips a new one."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    os.link(clips / "a.mp4", a / "日本.mp4")
    os.link(clips / "b.mp4", b / "clip.mp4")
    out = tmp_path / "out"
    run_cli("shard", str(a), "--out", str(out), *SHARD)
    (first,) = read_manifest(out).to_pylist()
    assert first["video_id"] == "video"  # nothing of the name is safe
    os.link(clips / "b.mp4", a / "中国.mov")  # would take the id "video" too
    os.link(clips / "a.mp4", a / "clip.mp4")
    run_cli("shard", str(a), "--out", str(out), *SHARD)
    run_cli("shard", str(b), "--out", str(out), *SHARD)  # B/clip.mp4: an input of its own
    rows = {r["source"]: r for r in read_manifest(out).to_pylist()}
    want = {str(a / n) for n in ("日本.mp4", "中国.mov", "clip.mp4")} | {str(b / "clip.mp4")}
    assert set(rows) == want and len(read_manifest(out)) == 4
    assert (
        rows[str(a / "日本.mp4")]["video_id"] == "video" and rows[str(a / "日本.mp4")]["run"] == 1
    )
    assert len({r["video_id"] for r in rows.values()}) == 4
    assert len(read_shards(out)) == 8  # read_shards fails on a key seen twice


def test_same_file_given_twice(clips, tmp_path):
    """A file named twice is one input; a manifest listing a path twice, two inputs."""
    folder = tmp_path / "in"
    folder.mkdir()
    os.link(clips / "a.mp4", folder / "a.mp4")
    m = tmp_path / "twice.csv"
    m.write_text(f"path,label\n{clips / 'b.mp4'},cat\n{clips / 'b.mp4'},animal\n")
    out = tmp_path / "out"
    os.symlink(folder / "a.mp4", tmp_path / "link.mp4")
    run_cli("shard", str(folder), str(folder / "a.mp4"), f"{tmp_path}/./in/a.mp4",
            str(tmp_path / "link.mp4"), str(m), "--out", str(out), *SHARD)  # fmt: skip
    rows = read_manifest(out).to_pylist()
    assert sorted((r["source"], r["label"]) for r in rows) == [
        (str(clips / "b.mp4"), "animal"),
        (str(clips / "b.mp4"), "cat"),
        (str(folder / "a.mp4"), None),
    ]
    assert all(r["status"] == "ok" for r in rows)
    assert len({r["video_id"] for r in rows}) == 3
    assert len(read_shards(out)) == 6  # read_shards fails on a key seen twice


# -- manifests -----------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    src = tmp_path_factory.mktemp("clips")
    make_demo_video(src / "a.mp4", duration_s=3, size=(160, 120))
    make_demo_video(src / "b.mp4", duration_s=3, size=(160, 120), color="blue")
    return src


def test_manifest_columns_reach_every_sample(clips, tmp_path):
    """csv, jsonl and parquet manifests: id, label and extra columns carried along."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    rel = os.path.relpath(clips, mdir)  # relative paths are relative to the manifest
    with open(mdir / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["path", "id", "label", "split", "weight"],
                     [f"{rel}/a.mp4", "csv_a", "dog", "train", "0.5"],
                     [str(clips / "b.mp4"), "csv_b", "cat", "val", "1"]])  # fmt: skip
    with open(mdir / "m.jsonl", "w") as f:
        f.write(json.dumps({"path": f"{rel}/a.mp4", "id": "jsonl_a", "label": 3,
                            "split": "train", "tags": ["x", "y"]}) + "\n")  # fmt: skip
    pq.write_table(
        pa.table({"path": [str(clips / "b.mp4")], "id": ["pq_b"], "label": ["bird"],
                  "weight": [0.25], "year": [2019]}),
        mdir / "m.parquet",
    )  # fmt: skip
    out = tmp_path / "out"
    run_cli("shard", str(mdir / "m.csv"), str(mdir / "m.jsonl"), str(mdir / "m.parquet"),
            "--out", str(out), *SHARD)  # fmt: skip
    want = {
        "csv_a": ("dog", {"split": "train", "weight": "0.5"}),
        "csv_b": ("cat", {"split": "val", "weight": "1"}),
        "jsonl_a": ("3", {"split": "train", "tags": ["x", "y"]}),
        "pq_b": ("bird", {"weight": 0.25, "year": 2019}),
    }
    table = read_manifest(out).to_pylist()
    assert {r["video_id"]: r["status"] for r in table} == dict.fromkeys(want, "ok")
    for r in table:
        label, extra = want[r["video_id"]]
        assert (r["label"], json.loads(r["extra_json"])) == (label, extra)
    by_video = _samples_by_video(out)
    assert set(by_video) == set(want)
    for vid, metas in by_video.items():
        assert len(metas) == 2
        for m in metas:
            assert (m["label"], m["extra"]) == want[vid]


def test_manifest_nan_and_infinity_become_null(clips, tmp_path):
    """pandas writes missing values as NaN; the sample json must stay strict JSON."""
    m = tmp_path / "m.jsonl"
    m.write_text(f'{{"path": "{clips / "a.mp4"}", "x": NaN, "y": [1, Infinity], "z": 2}}\n')
    out = tmp_path / "out"
    run_cli("shard", str(m), "--out", str(out), *SHARD)

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in json"))

    (row,) = read_manifest(out).to_pylist()
    assert strict(row["extra_json"]) == {"x": None, "y": [1, None], "z": 2}
    for s in read_shards(out).values():
        assert s["json"]["extra"] == {"x": None, "y": [1, None], "z": 2}


def test_csv_manifest_saved_by_excel(clips, tmp_path):
    """A UTF-8 csv with a byte-order mark (Excel's "CSV UTF-8") still has a path column."""
    m = tmp_path / "excel.csv"
    m.write_text(f"path,label\r\n{clips / 'a.mp4'},dog\r\n", encoding="utf-8-sig")
    out = tmp_path / "out"
    run_cli("shard", str(m), "--out", str(out), *SHARD)
    (row,) = read_manifest(out).to_pylist()
    assert (row["status"], row["label"], row["extra_json"]) == ("ok", "dog", "{}")


def test_duplicate_names_get_unique_ids(clips, tmp_path):
    """The same file name in two folders: two inputs, two ids, no key collision."""
    for sub in ("x", "y/z"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        os.link(clips / "a.mp4", tmp_path / "in" / sub / "a.mp4")
    os.link(clips / "a.mp4", tmp_path / "in" / "a.mp4")
    out = tmp_path / "out"
    run_cli("shard", str(tmp_path / "in" / "x" / "a.mp4"), str(tmp_path / "in" / "y"),
            str(tmp_path / "in" / "a.mp4"), "--out", str(out), *SHARD)  # fmt: skip
    rows = read_manifest(out).to_pylist()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert len({r["video_id"] for r in rows}) == 3
    assert len(read_shards(out)) == 6


# -- folders -----------------------------------------------------------------


def test_folder_walk_follows_links_once_and_ignores_non_media(clips, tmp_path):
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    os.link(clips / "a.mp4", root / "top.MP4")
    os.link(clips / "b.mp4", root / "sub" / "deeper" / "nested.mkv.mp4")
    os.link(clips / "a.mp4", root / ".hidden" / "secret.mp4")
    os.link(clips / "a.mp4", root / ".dotfile.mp4")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # a loop
    (root / "sub" / "self").symlink_to(".", target_is_directory=True)
    (root / "notes.txt").write_text("not media")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "sub" / "data.csv").write_text("path\nnowhere.mp4\n")  # only a manifest at top level
    (root / "sub" / "README").write_text("no extension")
    (root / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")  # dangling: recorded, not ignored
    out = tmp_path / "out"
    run_cli("shard", str(root), "--out", str(out), *SHARD)
    rows = _rows(out)
    ok = {str(root / "top.MP4"), str(root / "sub/deeper/nested.mkv.mp4")}
    assert set(rows) == ok | {str(root / "gone.mp4")}
    assert all(rows[s]["status"] == "ok" for s in ok)
    assert (rows[str(root / "gone.mp4")]["status"], rows[str(root / "gone.mp4")]["reason"]) == (
        "failed",
        "missing: broken symlink",
    )
    assert {rows[s]["video_id"] for s in ok} == {"top", "sub_deeper_nested_mkv"}


# -- real clips ----------------------------------------------------------------


def test_real_clips(tmp_path):
    """nasa_13013 has two video and two audio streams: the larger of each is chosen."""
    nasa, yt = real_clip("nasa_13013.mp4"), real_clip("v_GGSY1Qvo990.mp4")
    av1, h265 = real_clip("av1_video.mkv"), real_clip("h265_video.mp4")
    out = tmp_path / "out"
    run_cli("shard", str(nasa), str(yt), str(av1), str(h265), "--out", str(out),
            "--segment-seconds", "5", "--workers", "2", "--quiet")  # fmt: skip
    rows = _rows(out)
    n = rows[str(nasa)]
    assert n["status"] == "ok", n
    assert (n["video_stream"], n["audio_stream"]) == (3, 4)
    assert (n["n_video_streams"], n["n_audio_streams"]) == (2, 2)
    assert (n["width"], n["height"]) == (480, 270)
    assert rows[str(yt)]["status"] == "ok", rows[str(yt)]
    assert (rows[str(av1)]["status"], rows[str(av1)]["reason"]) == ("skipped", "no_audio")
    assert (rows[str(h265)]["status"], rows[str(h265)]["reason"]) == ("skipped", "no_audio")
    by_video = _samples_by_video(out)
    assert set(by_video) == {"nasa_13013", "v_GGSY1Qvo990"}
    for vid, row in (("nasa_13013", n), ("v_GGSY1Qvo990", rows[str(yt)])):
        metas = sorted(by_video[vid], key=lambda m: m["segment"])
        assert [m["segment"] for m in metas] == list(range(row["n_segments"]))
        assert metas[0]["media"]["video_stream"] == row["video_stream"]
        assert min(metas[0]["frame_size"]) == 128  # short side
