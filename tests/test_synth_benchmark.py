"""avprep synth: the benchmark's files are deterministic, its splits disjoint, and its ground
truth is where the sound is, after the real ``avprep shard`` (real ffmpeg, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from conftest import read_shards, run_cli

from avprep import scene
from avprep.benchmark import BenchmarkConfig, make_benchmark
from avprep.errors import UsageError
from avprep.truth import box_at, box_pixels, frame_boxes, sounding_at, truth_of

ARGS = ["--videos", "4", "--test-videos", "2", "--seed", "7", "--silence", "0.25", "--classes", "8", "--objects", "3"]
COLOURS = dict(scene.CLASSES)
NEAR = 60  # RGB distance: a pixel of a class's colour (classes are >= 99 apart, >= 100 from the background)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """A small benchmark made by the CLI, both splits sharded by the real ``avprep shard``."""
    out = tmp_path_factory.mktemp("synth") / "bench"
    run_cli("synth", str(out), *ARGS, "--workers", "2")
    run_cli("shard", str(out / "train" / "manifest.jsonl"), str(out / "test" / "manifest.jsonl"),
            "--out", str(out.parent / "shards"), "--short-side", "112", "--fps", "8",
            "--workers", "2", "--quiet")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def samples(bench) -> dict[str, dict]:
    """key -> {json, frames, spec, shard} of every stored sample."""
    return read_shards(bench.parent / "shards")


def _rows(bench: Path, split: str) -> list[dict]:
    return [
        json.loads(line) for line in (bench / split / "manifest.jsonl").read_text().splitlines()
    ]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "benchmark.json"}  # fmt: skip


def test_same_seed_gives_byte_identical_files(bench, tmp_path):
    again = tmp_path / "again"
    make_benchmark(
        BenchmarkConfig(
            str(again), videos=4, test_videos=2, seed=7, silence=0.25, classes=8, objects=3, workers=1
        )
    )
    first, second = _files(bench), _files(again)
    assert sorted(first) == sorted(second)
    assert len([n for n in first if n.endswith(".mp4")]) == 6
    assert first == second  # other workers, other folder: the same bytes

    other = tmp_path / "other"
    make_benchmark(
        BenchmarkConfig(
            str(other), videos=4, test_videos=2, seed=8, silence=0.25, classes=8, objects=3, workers=1
        )
    )
    for name, data in _files(other).items():
        if name.endswith(".mp4"):
            assert data != first[name], f"seed 8 made the same {name} as seed 7"


def test_splits_share_no_video(bench):
    train, test = _rows(bench, "train"), _rows(bench, "test")
    assert (len(train), len(test)) == (4, 2)
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    digests = {split: {(bench / split / r["path"]).read_bytes() for r in rows}
               for split, rows in (("train", train), ("test", test))}  # fmt: skip
    assert len(digests["train"]) == 4 and len(digests["test"]) == 2
    assert not digests["train"] & digests["test"]
    for split, rows in (("train", train), ("test", test)):
        for r in rows:
            assert (bench / split / r["path"]).resolve().parent == (
                bench / split / "videos"
            ).resolve()
            assert r["split"] == split


def test_every_sample_json_carries_the_truth(bench, samples):
    rows = {r["id"]: r for split in ("train", "test") for r in _rows(bench, split)}
    assert {m["json"]["video_id"] for m in samples.values()} == set(rows)
    for key, sample in samples.items():
        meta = sample["json"]
        row = rows[meta["video_id"]]
        truth = truth_of(meta)
        assert meta["label"] == row["label"] == scene.CLASSES[truth["class_index"]][0]
        assert truth == {
            k: v for k, v in row.items() if k not in ("path", "id", "label")
        }  # nested lists intact
        assert meta["frame_size"] == [112, 112] and meta["n_frames"] == 32, key  # stored as made
        assert meta["frame_times"] == truth["box_times_s"]
        assert frame_boxes(meta) == [tuple(b) for b in truth["boxes"]]
        assert len(truth["distractors"]) == 2
        classes = {truth["class_index"], *(d["class_index"] for d in truth["distractors"])}
        assert len(classes) == 3 and classes <= set(range(truth["n_classes"]))


def test_classes_differ_in_colour_from_each_other_and_from_the_background():
    rgb = np.array([c for _, c in scene.CLASSES], float)
    apart = np.linalg.norm(rgb[:, None] - rgb[None], axis=2) + 1e3 * np.eye(len(rgb))
    assert apart.min() > 1.5 * NEAR
    greys = np.stack(np.meshgrid(*[np.arange(30, 161, 5.0)] * 3), -1).reshape(-1, 3)
    near_grey = greys[np.ptp(greys, axis=1) <= 20]  # the texture: levels 40..150, tint +-10
    assert np.linalg.norm(rgb[:, None] - near_grey[None], axis=2).min() > 1.5 * NEAR
    shapes = {name.split("_")[1] for name, _ in scene.CLASSES}
    assert len(shapes) == len(scene.CLASSES)


def _colour_box(image: np.ndarray, rgb) -> tuple[float, float, float, float]:
    """The normalized bounding box of the pixels near colour ``rgb``."""
    near = np.linalg.norm(image.astype(float) - np.array(rgb, float), axis=2) < NEAR
    rows, cols = np.nonzero(near)
    h, w = near.shape
    return cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_boxes_are_where_the_objects_are_drawn(samples):
    """In every decoded stored frame, the pixels of each object's colour fill its box."""
    for key, sample in samples.items():
        meta = sample["json"]
        truth = truth_of(meta)
        objects = [(meta["label"], None)] + [
            (d["label"], i) for i, d in enumerate(truth["distractors"])
        ]
        for k, t in enumerate(meta["frame_times"]):
            image = simplejpeg.decode_jpeg(sample["frames"][k])
            for label, distractor in objects:
                box = box_at(meta, t, distractor=distractor)
                iou = _iou(_colour_box(image, COLOURS[label]), box)
                assert iou > 0.75, f"{key} frame {k}: {label} found at IoU {iou:.2f} with its box"
            c0, r0, c1, r1 = box_pixels(box_at(meta, t), 112, 112)
            inside = np.linalg.norm(
                image[r0:r1, c0:c1].astype(float) - COLOURS[meta["label"]], axis=2
            )
            assert (inside < NEAR).mean() > 0.3, (
                f"{key} frame {k}: the sounding colour is rare in its box"
            )


def _power(sample) -> tuple[np.ndarray, np.ndarray, float]:
    """(each spectrogram column's start time, its power summed over mels, window length)."""
    meta = sample["json"]
    spec = sample["spec"].astype(float)
    starts = meta["spec_start_s"] + meta["spec"]["hop_s"] * np.arange(spec.shape[1])
    return starts, np.exp(spec).sum(axis=0), meta["spec"]["win_s"]


def test_sound_strikes_at_the_sounding_objects_wall_bounces(samples):
    n_onsets = n_checked = 0
    for key, sample in samples.items():
        meta = sample["json"]
        truth = truth_of(meta)
        starts, power, win = _power(sample)
        onsets = np.array(truth["onsets_s"])
        assert onsets.size >= 2, f"{key}: fewer than two strikes in 4 s"
        n_onsets += onsets.size
        for t in onsets:
            # the sounding object touches a wall then: a box edge within one frame's travel
            x0, y0, x1, y1 = box_at(meta, t)
            assert min(x0, y0, 1 - x1, 1 - y1) <= 80 / 8 / 112, (
                f"{key}: strike at {t} s off the walls"
            )
            assert sounding_at(meta, t)
            if not starts[0] + 0.06 <= t <= starts[-1]:
                continue  # too near an end for a spectrogram before and after
            after = power[(starts >= t - win) & (starts <= t + 0.02)].max()
            before = power[(starts + win <= t) & (starts >= t - 0.06)].min()
            n_checked += 1
            assert after > 1.5 * before, f"{key}: no rise in sound at the strike at {t:.3f} s"
        # and nothing else strikes: every quick rise of the sound is at an onset (or where
        # the silent stretch ends and the hum comes back)
        (a, b), = truth["silences_s"]  # fmt: skip
        jumps = starts[2:][power[2:] > 4 * power[:-2]]
        for t in jumps:
            gap = min(np.abs(onsets - t).min(), abs(t - b))
            assert gap < 0.04, f"{key}: the sound rises at {t:.3f} s, no strike there"
        # a silent stretch is quieter than the rest (only noise is left)
        assert not sounding_at(meta, (a + b) / 2)
        quiet = power[(starts >= a + 0.05) & (starts + win <= b - 0.05)]
        loud = power[(starts + win < a) | (starts > b)]
        assert np.median(quiet) < 0.5 * np.median(loud), key
    assert n_onsets >= 6 * 4 and n_checked >= n_onsets - 2 * 6


def test_box_lookup_is_the_frame_on_display():
    meta = {"frame_times": [0.0, 0.5], "extra": {
        "synth": 1, "box_times_s": [0.0, 0.25, 0.5], "silences_s": [[0.3, 0.4]],
        "boxes": [[0, 0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.4, 0.4, 0.5, 0.5]],
        "distractors": [{"boxes": [[0.5, 0.5, 1, 1]] * 3}]}}  # fmt: skip
    assert box_at(meta, 0.0) == (0, 0, 0.1, 0.1)
    assert box_at(meta, 0.2499999) == (0.2, 0.2, 0.3, 0.3)  # microsecond rounding of stored times
    assert box_at(meta, 0.24) == (0, 0, 0.1, 0.1)
    assert box_at(meta, 0.49) == (0.2, 0.2, 0.3, 0.3)
    assert box_at(meta, 7.0) == (0.4, 0.4, 0.5, 0.5)  # the last frame stays on display
    assert box_at(meta, 0.3, distractor=0) == (0.5, 0.5, 1, 1)
    assert frame_boxes(meta) == [(0, 0, 0.1, 0.1), (0.4, 0.4, 0.5, 0.5)]
    assert box_at(meta["extra"], 0.3) == (0.2, 0.2, 0.3, 0.3)  # the extra dict alone works too
    assert [sounding_at(meta, t) for t in (0.29, 0.3, 0.39, 0.4)] == [True, False, False, True]
    assert box_pixels((0.25, 0.5, 0.75, 1.0), 112, 56) == (28, 28, 84, 56)
    with pytest.raises(ValueError, match="no avprep synth ground truth"):
        box_at({"frame_times": [0.0], "extra": {"camera": "a"}}, 0.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objects", "4"], "--objects must be in 2..3"),
        (["--classes", "9"], "--classes must be in 2..8"),
        (["--objects", "3", "--classes", "2"], "--classes (2) must be at least --objects (3)"),
        (["--noise", "nan"], "--noise must be in 0.0..1.0"),
        (["--silence", "0.6"], "--silence must be in 0.0..0.5"),
        (["--size", "100"], "--size must be a multiple of 16"),
        (["--object-size", "24"], "--object-size must be in 32..256"),
        (["--objects", "3", "--object-size", "48"], "cover more than half of a 112 px frame"),
        (["--videos", "0"], "--videos must be in 1..100000"),
        (["--classes", "5", "--silent-classes", "4"], "plus --silent-classes 4 is more than the 8"),
        (["--objects", "3", "--classes", "4", "--silent-classes", "1"],
         "--silent-classes (1) must be at least --objects - 1 (2)"),
        (["--silent-classes", "7"], "--silent-classes must be in 0..6"),
        (["--workers", "-1"], "--workers must be in 0..64 (0: one per CPU core), got -1"),
    ],
)
def test_bad_knobs_are_one_line(tmp_path, args, message):
    proc = run_cli("synth", str(tmp_path / "b"), *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "b").exists()


def test_a_folder_is_remade_only_with_its_own_settings(tmp_path):
    out = tmp_path / "b"
    cfg = BenchmarkConfig(str(out), videos=2, test_videos=0, workers=1)
    make_benchmark(cfg)
    kept, lost = (out / "train" / "videos" / f"train-0000{i}.mp4" for i in (0, 1))
    first, stamp, manifest = lost.read_bytes(), kept.stat().st_mtime_ns, (out / "train" / "manifest.jsonl").read_text()
    lost.unlink()  # as if killed before this one was encoded
    left = out / "train" / ".synth-killed"  # the raw frames of a run that was killed
    left.mkdir()
    (left / "0.rgb").write_bytes(b"frames")
    (out / "train" / "videos" / ".train-00001.mp4.tmp").write_bytes(b"half")
    make_benchmark(cfg)  # the same settings: the rest made, the same bytes, nothing left over
    assert lost.read_bytes() == first and kept.stat().st_mtime_ns == stamp  # kept, not encoded again
    assert (out / "train" / "manifest.jsonl").read_text() == manifest
    assert sorted(p.name for p in (out / "train").rglob("*")) == ["manifest.jsonl", "train-00000.mp4",
                                                                  "train-00001.mp4", "videos"]  # fmt: skip
    with pytest.raises(UsageError, match="made with other settings"):
        make_benchmark(BenchmarkConfig(str(out), videos=1, test_videos=0, seed=1, workers=1))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    proc = run_cli("synth", str(tmp_path / "other"), "--videos", "1", check=False)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    for where, message in (("notes.txt", "is a file, not a folder"), ("notes.txt/b", "notes.txt is a file")):
        proc = run_cli("synth", str(tmp_path / "other" / where), "--videos", "1", check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_silent_classes_are_only_ever_distractors(tmp_path):
    """With --silent-classes D the distractors come from the D classes after the K that sound,
    so sight tells the sounding object; benchmark.json lists them without a pitch."""
    out = tmp_path / "b"
    run_cli("synth", str(out), "--videos", "12", "--test-videos", "4", "--classes", "3",
            "--silent-classes", "3", "--objects", "3", "--workers", "2", "--quiet")  # fmt: skip
    rows = _rows(out, "train") + _rows(out, "test")
    assert sorted({r["class_index"] for r in rows}) == [0, 1, 2]
    for r in rows:
        assert r["n_classes"] == 3 and r["label"] == scene.CLASSES[r["class_index"]][0]
        distractors = [d["class_index"] for d in r["distractors"]]
        assert len(set(distractors)) == 2 and all(3 <= c < 6 for c in distractors), r
    table = json.loads((out / "benchmark.json").read_text())["classes"]
    assert [c["pitch_hz"] is None for c in table] == [False] * 3 + [True] * 3
    assert [c["label"] for c in table] == [name for name, _ in scene.CLASSES[:6]]


def test_a_benchmark_from_before_a_setting_existed_is_still_its_own(tmp_path):
    """A benchmark.json without a later setting (silent_classes) holds that setting's default:
    the same settings remake it, others are still refused."""
    out = tmp_path / "b"
    cfg = BenchmarkConfig(str(out), videos=1, test_videos=0, workers=1)
    make_benchmark(cfg)
    settings = out / "benchmark.json"
    description = json.loads(settings.read_text())
    del description["config"]["silent_classes"]
    settings.write_text(json.dumps(description))
    make_benchmark(cfg)
    with pytest.raises(UsageError, match="made with other settings"):
        make_benchmark(
            BenchmarkConfig(
                str(out), videos=1, test_videos=0, workers=1, classes=4, silent_classes=2
            )
        )
