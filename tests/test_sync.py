"""Synchronization: flashes in the frames and beeps in the spectrogram line up.

Clapper videos have white flashes and 1 kHz beeps at the same known times. After
sharding, every flash must be found in the frames and every beep in the
spectrogram at its true time, within one stored frame period plus one hop,
whatever the container, codec, decoder, stream start or frame-rate regularity.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def clapper_shards(tmp_path_factory):
    src = tmp_path_factory.mktemp("clappers")
    truth = {}
    for name, kw in CASES.items():
        make_clapper(src / name, **{"flashes_s": FLASHES, "duration_s": 6.5, **kw})
        truth[name.rsplit(".", 1)[0]] = kw.get("flashes_s", FLASHES)
    ts = src / "mpegts_offset.ts"  # MPEG-TS streams start at 1.4 s, not 0
    make_clapper(ts, flashes_s=FLASHES, duration_s=6.5, extra_args=["-f", "mpegts"])
    truth["mpegts_offset"] = FLASHES
    out = tmp_path_factory.mktemp("shards")
    run_cli("shard", str(src), "--out", str(out), "--fps", str(FPS),
            "--segment-seconds", str(SEGMENT), "--workers", "2")  # fmt: skip
    return out, truth


def test_every_clapper_is_sharded(clapper_shards):
    out, truth = clapper_shards
    table = read_manifest(out).to_pylist()
    assert {r["video_id"] for r in table} == set(truth)
    assert all(r["status"] == "ok" for r in table), [(r["video_id"], r["reason"]) for r in table]
    decoders = {r["video_id"]: r["decoder"] for r in table}
    assert decoders["av1_opus"] == "ffmpeg"  # decord cannot open AV1
    assert decoders["h264_aac"] == "decord"


def test_flashes_and_beeps_at_true_times(clapper_shards):
    out, truth = clapper_shards
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
    out, _ = clapper_shards
    s = read_shards(out)["audio_late_1p2_0000"]
    spec = s["spec"].astype(np.float32)
    hop = s["json"]["spec"]["hop_s"]
    silent = spec[:, : int(1.1 / hop)]
    assert silent.max() < np.log(1e-5)  # log(0 + 1e-6) everywhere before the audio starts


def test_frames_and_spectrogram_cover_the_same_seconds(clapper_shards):
    out, _ = clapper_shards
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


def test_both_decoders_store_the_same_pictures(tmp_path):
    """Colour bars tagged BT.709 and BT.601 (limited range), in MP4 (decord) and MPEG-TS
    (the ffmpeg pipe, which hands JPEG the YUV planes): the same frames at the same
    times, and the same colours to within JPEG noise. Limited-range or BT.709 planes
    stored as if they were JPEG's full-range BT.601 would be off by ~11 levels on average."""
    src = tmp_path / "src"
    src.mkdir()
    for bars, matrix in (("smptehdbars", "bt709"), ("smptebars", "bt470bg")):
        for ext in ("mp4", "ts"):
            subprocess.run(
                ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"{bars}=s=320x180:d=2:r=25",
                 "-f", "lavfi", "-i", "sine=f=440:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                 "-colorspace", matrix, "-color_range", "tv", "-c:a", "aac", "-shortest",
                 str(src / f"{bars}.{ext}")],
                check=True,
            )  # fmt: skip
    out = tmp_path / "out"
    run_cli("shard", str(src), "--out", str(out), "--workers", "1")
    by_source = {Path(s["json"]["source"]).name: s for s in read_shards(out).values()}
    for bars in ("smptehdbars", "smptebars"):
        mp4, ts = by_source[f"{bars}.mp4"], by_source[f"{bars}.ts"]
        assert (mp4["json"]["media"]["decoder"], ts["json"]["media"]["decoder"]) == (
            "decord",
            "ffmpeg",
        )
        assert mp4["json"]["frame_times"] == ts["json"]["frame_times"]
        assert (
            mp4["json"]["frame_size"] == ts["json"]["frame_size"] == [228, 128]
        )  # 320x180 at 128 px
        a, b = decode_frames(mp4).astype(int), decode_frames(ts).astype(int)
        assert a.shape == b.shape
        diff = np.abs(a - b)
        assert diff.mean() < 3, (bars, diff.mean())
        assert np.abs((a - b).mean(axis=(0, 1, 2))).max() < 1.5, (
            bars,
            (a - b).mean(axis=(0, 1, 2)),
        )


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
        got, times = frames.read(start, start + 1.0, 16)  # 16 of every 25 frames: skips
        idx = np.searchsorted(frames.starts, times)
        fresh = decord.VideoReader(str(path), width=85, height=64, num_threads=1)
        assert np.array_equal(got, fresh.get_batch(idx.tolist()).asnumpy())
        assert np.array_equal(times, frames.starts[idx])
    frames.close()
