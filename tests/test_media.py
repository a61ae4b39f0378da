"""The PyAV engine (avprep.media) against the ffmpeg CLI path on the same files.

The same facts as ffprobe (streams chosen by the same rule, rotation, start times),
the same frames at the same grid times with the same timestamps (rotated the same
way), and the same audio on the same timeline (late audio -> silence, early audio
-> trimmed), sample for sample.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import read_manifest, read_shards, run_cli

from avprep.decode import AudioReader, FfmpegFrames
from avprep.errors import MediaError
from avprep.media.audio import PyavAudio
from avprep.media.container import Container
from avprep.media.flac import encode_flac
from avprep.media.frames import PyavFrames
from avprep.probe import probe
from avprep.synth import make_clapper, make_demo_video

SR = 16000
CASES = {
    "h264_aac.mp4": lambda p: make_clapper(p, duration_s=3.0),
    "late_audio.mkv": lambda p: make_clapper(
        p, duration_s=3.0, audio_delay_s=0.7, flashes_s=(1.0, 2.0)
    ),  # fmt: skip
    # MPEG-TS: the video starts at 1.48 s, its audio 21 ms earlier (trimmed)
    "offset.ts": lambda p: make_clapper(p, duration_s=3.0, extra_args=["-f", "mpegts"]),
    "mpeg4_30fps.avi": lambda p: make_clapper(p, duration_s=3.0, fps=30),
    "vfr.mp4": lambda p: make_clapper(p, duration_s=3.0, vfr=True),
    "rot90.mp4": lambda p: make_demo_video(p, duration_s=2.0, size=(160, 96), rotate_deg=90),
    "rot180.mp4": lambda p: make_demo_video(p, duration_s=2.0, size=(160, 96), rotate_deg=180),
    "rot270.mp4": lambda p: make_demo_video(p, duration_s=2.0, size=(160, 96), rotate_deg=270),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    src = tmp_path_factory.mktemp("media")
    for name, make in CASES.items():
        make(src / name)
    return {name: str(src / name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_facts_match_ffprobe(media, name):
    container = Container(media[name])
    got, want = container.info, probe(media[name])
    container.close()
    assert got.video == want.video
    assert got.format_name == want.format_name
    assert (got.n_video_streams, got.n_audio_streams) == (
        want.n_video_streams,
        want.n_audio_streams,
    )
    assert (got.audio.index, got.audio.codec, got.audio.channels, got.audio.sample_rate) == (
        want.audio.index,
        want.audio.codec,
        want.audio.channels,
        want.audio.sample_rate,
    )
    assert abs(got.audio.start_s - want.audio.start_s) < 0.01
    if name.startswith("rot"):
        assert got.video.rotation_deg == int(Path(name).stem[3:])


@pytest.mark.parametrize("name", list(CASES))
def test_frames_and_audio_match_the_ffmpeg_pipe(media, name):
    """Segments of 1 s at 16 fps, frames and audio read alternately as avprep shard does."""
    path = media[name]
    container = Container(path)
    info = container.info
    ours = PyavFrames(container, short_side_px=64)
    our_audio = PyavAudio(container, video_start_s=info.video.start_s, sample_rate=SR)
    theirs = FfmpegFrames(path, probe(path), short_side_px=64, threads=1)
    their_audio = AudioReader(path, info.audio, info.video.start_s, SR)
    assert ours.size == theirs.size
    n_frames = 0
    for start in np.arange(0.0, 4.0):
        a, b = ours.read(start, start + 1, 16), theirs.read(start, start + 1, 16)
        assert len(a) == len(b), (name, start)
        n_frames += len(a)
        if len(a):
            assert np.abs(a.pts_seconds - b.pts_seconds).max() < 1e-4  # showinfo prints 6 digits
            diff = np.abs(a.data.astype(int) - b.data.astype(int))
            assert diff.mean() < 2.5, (name, start, diff.mean())  # scalers differ; a turn: ~30
        wave_a, wave_b = our_audio.read(SR), their_audio.read(SR)
        assert np.abs(wave_a - wave_b).max() < 1e-3, (name, start)
    assert n_frames >= 16 * 2
    assert abs(ours.end_s - theirs.end_s) < 1e-3
    for reader in (ours, our_audio, theirs, their_audio):
        reader.close()
    container.close()


@pytest.mark.parametrize("name", ["late_audio.mkv", "offset.ts"])
def test_beeps_start_at_their_true_times(media, name):
    """Late audio (0.7 s) is preceded by silence and early audio (MPEG-TS) is trimmed: the
    first beep starts at 1.0 s on the video's timeline either way (within one 20 ms Opus frame)."""
    container = Container(media[name])
    info = container.info
    assert (info.audio.start_s - info.video.start_s > 0.6) == (name == "late_audio.mkv")
    wave = PyavAudio(container, video_start_s=info.video.start_s, sample_rate=SR).read(2 * SR)
    container.close()
    onset = np.flatnonzero(np.abs(wave) > 0.05)[0] / SR
    assert abs(onset - 1.0) < 0.02, onset


def test_the_stream_choice_is_ffprobes(tmp_path):
    """Two video and two audio streams; the second of each is larger and marked default."""
    small, large = tmp_path / "small.mp4", tmp_path / "large.mp4"
    make_clapper(small, duration_s=2.0, size=(96, 64))
    make_clapper(large, duration_s=2.0, size=(160, 120))
    both = tmp_path / "both.mkv"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(small), "-i", str(large), "-map", "0",
         "-map", "1", "-c", "copy", "-disposition:v:0", "0", "-disposition:v:1", "default",
         "-disposition:a:0", "0", "-disposition:a:1", "default", str(both)],
        check=True,
    )  # fmt: skip
    container = Container(str(both))
    got, want = container.info, probe(str(both))
    assert got.video == want.video and got.video.width == 160
    assert got.audio.index == want.audio.index == 3
    assert PyavFrames(container, short_side_px=64).size == (85, 64)
    container.close()


@pytest.mark.parametrize("content", [b"", b"this is not a video\n"])
def test_an_unreadable_file_is_one_media_error(content, tmp_path):
    path = tmp_path / "name-not-in-reason.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError) as e:
        Container(str(path))
    assert e.value.reason.startswith("decode_error: ")
    assert path.name not in e.value.reason and "\n" not in e.value.reason


def test_a_name_that_reads_as_a_protocol_is_opened_as_a_file(media, tmp_path, monkeypatch):
    """``concat:a|b`` relative to the working directory is that file, not the protocol."""
    monkeypatch.chdir(tmp_path)
    a = Path(media["h264_aac.mp4"])
    (tmp_path / "concat:x.mp4|y.mp4").write_bytes(a.read_bytes())
    container = Container("concat:x.mp4|y.mp4")
    assert container.info.video.duration_s == probe(str(a)).video.duration_s
    container.close()


def test_flac_is_the_waveform_in_16_bits():
    """--keep-audio's FLAC, encoded in-process: decodes to the waveform to within one step."""
    wave = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR)).astype(np.float32)
    wave[:100] = 1.5  # clipped, not wrapped
    data = encode_flac(wave, SR)
    with av.open(io.BytesIO(data)) as f:
        stream = f.streams.audio[0]
        assert (stream.codec_context.name, stream.sample_rate, stream.channels) == ("flac", SR, 1)
        got = np.concatenate([fr.to_ndarray()[0] for fr in f.decode(stream)]) / 32768
    assert len(got) == len(wave)
    assert np.abs(got - np.clip(wave, -1, 1)).max() <= 1 / 32768


def test_the_demo_needs_no_system_ffmpeg(tmp_path):
    """With no ffmpeg or ffprobe on PATH, `avprep demo` draws its videos with PyAV (the
    portrait one rotated for display, the late one's audio late, one in Matroska), shards
    them with PyAV and trains on them."""
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "demo"
    run_cli("demo", "--out", str(out), "--videos", "5", "--steps", "2", "--workers", "2",
            env={"PATH": str(empty), "OMP_NUM_THREADS": "1"})  # fmt: skip
    rows = {Path(r["source"]).name: r for r in read_manifest(out / "shards").to_pylist()}
    assert sorted(rows) == ["blue_880hz.mp4", "green_330hz.mkv", "late_audio.mp4",
                            "orange_440hz.mp4", "portrait_rotated.mp4"]  # fmt: skip
    assert {(r["status"], r["decoder"]) for r in rows.values()} == {("ok", "pyav")}
    turned = rows["portrait_rotated.mp4"]
    assert (turned["rotation_deg"], turned["width"], turned["height"]) == (90, 320, 240)
    assert rows["late_audio.mp4"]["audio_start_s"] == pytest.approx(0.5, abs=0.03)  # AAC priming
    assert rows["blue_880hz.mp4"]["source_fps"] == pytest.approx(30)
    assert rows["green_330hz.mkv"]["audio_codec"] == "opus"
    assert (out / "run" / "last.pt").exists()


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_pyav_demo_video_carries_its_rotation(tmp_path, turn):
    from avprep.demo_video import make

    path = make(tmp_path / "turned.mp4", duration_s=1.0, tone_hz=440, color="red", fps=25,
                size=(320, 240), rotate_deg=turn, audio_delay_s=0.0)  # fmt: skip
    c = Container(str(path))
    v = c.info.video
    c.close()
    assert v.rotation_deg == turn
    assert v.display_size == ((240, 320) if turn % 180 else (320, 240))


def test_shard_needs_no_system_ffmpeg(media, tmp_path):
    """With no ffmpeg or ffprobe on PATH, the default decoder shards (FLAC included); the
    ffmpeg pipe, asked for, is one line naming what is missing."""
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "out"
    inputs = [media["h264_aac.mp4"], media["offset.ts"], media["rot90.mp4"]]
    run_cli("shard", *inputs, "--out", str(out), "--workers", "1", "--keep-audio",
            "--segment-seconds", "2", env={"PATH": str(empty)})  # fmt: skip
    rows = read_manifest(out).to_pylist()
    assert sorted((r["status"], r["decoder"]) for r in rows) == [("ok", "pyav")] * 3
    samples = read_shards(out)
    assert len(samples) == 5 and all(len(s["flac"]) > 100 for s in samples.values())
    proc = run_cli("shard", *inputs, "--out", str(tmp_path / "out2"), "--decoder", "ffmpeg",
                   check=False, env={"PATH": str(empty)})  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("avprep: error: ffmpeg not found on PATH")
    assert len(proc.stderr.strip().splitlines()) == 1
