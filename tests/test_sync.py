"""Synchronization: flashes in the frames and beeps in the spectrogram line up.

Clapper videos have white flashes and 1 kHz beeps at the same known times. After
sharding, every flash must be found in the frames and every beep in the
spectrogram at its true time, within one stored frame period plus one hop,
whatever the container, codec, decoder, stream start or frame-rate regularity.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import decode_frames, read_manifest, read_shards, run_cli

from avprep.synth import make_clapper

FLASHES = (1.0, 2.5, 4.0, 5.2)
FPS = 16.0
SEGMENT = 3.0

CASES = {
    "h264_aac.mp4": {},
    "audio_late_0p5.mp4": {"audio_delay_s": 0.5},
    "audio_late_1p2.mkv": {"audio_delay_s": 1.2, "flashes_s": (1.5, 2.5, 4.0, 5.2)},
    "vfr.mp4": {"vfr": True},
    "vp9_opus.webm": {},
    "av1_opus.mkv": {"vcodec": "libaom-av1", "duration_s": 6.0},
    "mpeg4_30fps.avi": {"fps": 30},
}


def _mel_bin(hz: float, n_mels: int, sr: int) -> int:
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(
        sr // 2 + 1, 0.0, sr / 2, n_mels, sr, norm="slaney", mel_scale="slaney"
    )
    return int(fb[round(hz / (sr / 2) * (sr // 2))].argmax())


def onsets(values: np.ndarray, times: np.ndarray, threshold: float) -> list[float]:
    on = values > threshold
    return [float(times[i]) for i in range(len(on)) if on[i] and (i == 0 or not on[i - 1])]


NO_DECORD = pytest.mark.skipif(
    importlib.util.find_spec("decord") is None, reason="decord (avprep[decord]) not installed"
)
# --decoder -> the decoder each clapper must be decoded by (default: the first).
EXPECTED_DECODERS = {
    "auto": {"*": "pyav"},
    "pyav": {"*": "pyav"},
    # decord cannot open AV1, and its frame index is wrong in stream containers
    "decord": {
        "*": "decord",
        "av1_opus": "ffmpeg",
        "mpeg4_30fps": "ffmpeg",
        "mpegts_offset": "ffmpeg",
    },  # fmt: skip
    "ffmpeg": {"*": "ffmpeg"},
}


@pytest.fixture(scope="module")
def clapper_sources(tmp_path_factory):
    src = tmp_path_factory.mktemp("clappers")
    truth = {}
    for name, kw in CASES.items():
        make_clapper(src / name, **{"flashes_s": FLASHES, "duration_s": 6.5, **kw})
        truth[name.rsplit(".", 1)[0]] = kw.get("flashes_s", FLASHES)
    ts = src / "mpegts_offset.ts"  # MPEG-TS streams start at 1.4 s, not 0
    make_clapper(ts, flashes_s=FLASHES, duration_s=6.5, extra_args=["-f", "mpegts"])
    truth["mpegts_offset"] = FLASHES
    return src, truth


@pytest.fixture(
    scope="module",
    params=[pytest.param(d, marks=[NO_DECORD] if d == "decord" else []) for d in EXPECTED_DECODERS],
)
def clapper_shards(request, clapper_sources, tmp_path_factory):
    src, truth = clapper_sources
    out = tmp_path_factory.mktemp(f"shards-{request.param}")
    run_cli("shard", str(src), "--out", str(out), "--fps", str(FPS), "--segment-seconds",
            str(SEGMENT), "--workers", "2", "--decoder", request.param)  # fmt: skip
    return out, truth, request.param


def test_every_clapper_is_sharded(clapper_shards):
    out, truth, decoder = clapper_shards
    table = read_manifest(out).to_pylist()
    assert {r["video_id"] for r in table} == set(truth)
    assert all(r["status"] == "ok" for r in table), [(r["video_id"], r["reason"]) for r in table]
    want = EXPECTED_DECODERS[decoder]
    for r in table:
        assert r["decoder"] == want.get(r["video_id"], want["*"]), (decoder, r["video_id"])
    for s in read_shards(out).values():
        assert s["json"]["media"]["decoder"] == want.get(s["json"]["video_id"], want["*"])


def test_flashes_and_beeps_at_true_times(clapper_shards):
    out, truth, _ = clapper_shards
    samples = read_shards(out)
    by_video: dict[str, list[dict]] = {}
    for s in samples.values():
        by_video.setdefault(s["json"]["video_id"], []).append(s)
    for vid, flashes in truth.items():
        segs = sorted(by_video[vid], key=lambda s: s["json"]["segment"])
        flash_t, beep_t = [], []
        for s in segs:
            meta = s["json"]
            frames = decode_frames(s)
            brightness = frames.mean(axis=(1, 2, 3))
            flash_t += onsets(brightness, np.asarray(meta["frame_times"]), 128)
            spec = s["spec"].astype(np.float32)
            spec_meta = meta["spec"]
            band = spec[_mel_bin(1000, spec_meta["n_mels"], meta["sample_rate"])]
            cols = meta["spec_start_s"] + np.arange(spec.shape[1]) * spec_meta["hop_s"]
            centres = cols + spec_meta["win_s"] / 2
            beep_t += onsets(band, centres, band.min() + 0.5 * (band.max() - band.min()))
        tol = 1 / FPS + segs[0]["json"]["spec"]["hop_s"]
        assert len(flash_t) == len(flashes), (vid, flash_t)
        assert len(beep_t) == len(flashes), (vid, beep_t)
        for want, got_v, got_a in zip(flashes, flash_t, beep_t, strict=True):
            assert abs(got_v - want) <= tol, (vid, "flash", want, got_v)
            assert abs(got_a - want) <= tol, (vid, "beep", want, got_a)


def test_late_audio_starts_with_silence(clapper_shards):
    out, _, _ = clapper_shards
    s = read_shards(out)["audio_late_1p2_0000"]
    spec = s["spec"].astype(np.float32)
    hop = s["json"]["spec"]["hop_s"]
    silent = spec[:, : int(1.1 / hop)]
    assert silent.max() < np.log(1e-5)  # log(0 + 1e-6) everywhere before the audio starts


def test_frames_and_spectrogram_cover_the_same_seconds(clapper_shards):
    out, _, _ = clapper_shards
    for s in read_shards(out).values():
        m = s["json"]
        times = np.asarray(m["frame_times"])
        assert len(times) == m["n_frames"] == len(s["frames"])
        assert np.all(np.diff(times) >= 0)
        assert times[-1] < m["end_s"] and times[0] <= m["start_s"] + 1 / m["fps"]
        assert abs(m["spec_start_s"] - m["start_s"]) <= 1 / m["sample_rate"]
        hop, win = m["spec"]["hop_s"], m["spec"]["win_s"]
        spec_end = m["spec_start_s"] + (s["spec"].shape[1] - 1) * hop + win
        assert m["end_s"] - hop <= spec_end <= m["end_s"] + 1e-6
        assert s["spec"].dtype == np.float16 and s["spec"].shape[0] == m["spec"]["n_mels"]
        assert "." not in s["json"]["key"]


BARS = (("smptehdbars", "bt709"), ("smptebars", "bt470bg"))


def _shard_by_source(src: Path, out: Path, decoder: str) -> dict[str, dict]:
    run_cli("shard", str(src), "--out", str(out), "--workers", "1", "--decoder", decoder)
    return {Path(s["json"]["source"]).name: s for s in read_shards(out).values()}


@pytest.fixture(scope="module")
def colour_bars(tmp_path_factory):
    """Colour bars tagged BT.709 and BT.601 (limited range) in MP4 and MPEG-TS, and what
    the ffmpeg pipe stores of them (scaled by ffmpeg into JPEG's full-range BT.601)."""
    src = tmp_path_factory.mktemp("bars")
    for bars, matrix in BARS:
        for ext in ("mp4", "ts"):
            subprocess.run(
                ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"{bars}=s=320x180:d=2:r=25",
                 "-f", "lavfi", "-i", "sine=f=440:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                 "-colorspace", matrix, "-color_range", "tv", "-c:a", "aac", "-shortest",
                 str(src / f"{bars}.{ext}")],
                check=True,
            )  # fmt: skip
    return src, _shard_by_source(src, tmp_path_factory.mktemp("ffmpeg"), "ffmpeg")


@pytest.mark.parametrize("decoder", ["auto", "pyav", pytest.param("decord", marks=NO_DECORD)])
def test_decoders_store_the_same_pictures(colour_bars, decoder, tmp_path):
    """Every decoder stores the ffmpeg pipe's frames at the same times, with the same
    colours to within JPEG and scaler noise. Limited-range or BT.709 planes stored as if
    they were JPEG's full-range BT.601 would be off by ~11 levels on average."""
    src, reference = colour_bars
    got = _shard_by_source(src, tmp_path / "out", decoder)
    assert set(got) == set(reference) == {f"{b}.{e}" for b, _ in BARS for e in ("mp4", "ts")}
    for name, ref in reference.items():
        sample = got[name]
        want = {"auto": "pyav", "pyav": "pyav"}.get(decoder) or (
            "decord" if name.endswith(".mp4") else "ffmpeg"  # decord: not for MPEG-TS
        )
        assert (ref["json"]["media"]["decoder"], sample["json"]["media"]["decoder"]) == (
            "ffmpeg",
            want,
        )
        assert sample["json"]["frame_times"] == ref["json"]["frame_times"]
        assert sample["json"]["frame_size"] == ref["json"]["frame_size"] == [228, 128]
        a, b = decode_frames(sample).astype(int), decode_frames(ref).astype(int)
        assert a.shape == b.shape
        diff = np.abs(a - b)
        assert diff.mean() < 3, (name, decoder, diff.mean())
        channel = np.abs((a - b).mean(axis=(0, 1, 2))).max()
        assert channel < 1.5, (name, decoder, (a - b).mean(axis=(0, 1, 2)))


@NO_DECORD
def test_decord_reads_across_keyframes_match_a_fresh_reader(tmp_path):
    """DecordFrames also reads the frame before each keyframe it would skip past (so that
    decord does not seek); what it returns must be exactly the frames asked for."""
    import decord

    from avprep.decode import DecordFrames
    from avprep.probe import probe

    path = tmp_path / "gop10.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240:d=4:r=25",
         "-c:v", "libx264", "-g", "10", "-bf", "2", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    frames = DecordFrames(str(path), probe(str(path), timeout_s=60), short_side_px=64, threads=1)
    assert frames.pad_keys and len(frames.keys) == 10
    for start in (0.0, 1.0, 2.0, 3.0):
        batch = frames.read(start, start + 1.0, 16)  # 16 of every 25 frames: skips
        got, times = batch.data, batch.pts_seconds
        idx = np.searchsorted(frames.starts, times)
        fresh = decord.VideoReader(str(path), width=85, height=64, num_threads=1)
        assert np.array_equal(got, fresh.get_batch(idx.tolist()).asnumpy())
        assert np.array_equal(times, frames.starts[idx])
    frames.close()
