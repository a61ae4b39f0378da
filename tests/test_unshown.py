"""Frames no output time shows are left undecoded (avprep.media.unshown), and what is
stored does not change: the same rows, byte for byte, and the same timestamps as a
reader that decodes every frame, and as a plain reference that decodes every frame
with PyAV and applies the display rule itself."""

from __future__ import annotations

import subprocess

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from avprep.media.container import Container
from avprep.media.frames import INTERPOLATION, PyavFrames
from avprep.media.timeline import EPS, grid_times
from avprep.media.unshown import SegmentGrid

FPS, SEGMENT_S, SHORT = 16.0, 2.0, 64
SRC = "testsrc2=s=320x240:r={r}:d=7,noise=alls=10:allf=t"
CASES = {  # name: (frame rate, output options); every one has non-reference frames
    "h264_25fps_pyramid.mp4": ("25", ["-c:v", "libx264", "-bf", "3", "-b-pyramid", "normal"]),
    "h264_30fps.mp4": ("30", ["-c:v", "libx264", "-bf", "3", "-g", "60"]),
    "h264_60fps_flat_b.mp4": ("60", ["-c:v", "libx264", "-bf", "2", "-b-pyramid", "none"]),
    "h264_ntsc_open_gop.mkv": (
        "24000/1001",
        ["-c:v", "libx264", "-bf", "5", "-x264-params", "open-gop=1"],
    ),  # fmt: skip
    "h264_offset.ts": ("30", ["-c:v", "libx264", "-bf", "3", "-output_ts_offset", "1.3"]),
    "hevc_b.mp4": ("25", ["-c:v", "libx265", "-x265-params", "bframes=4:log-level=0"]),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("unshown")
    for name, (rate, opts) in CASES.items():
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", SRC.format(r=rate),
               "-pix_fmt", "yuv420p", *opts, str(out / name)]  # fmt: skip
        subprocess.run(cmd, check=True)
    return {name: str(out / name) for name in CASES}


def read_all(path: str, *, skip: bool) -> tuple[list, int]:
    """(per segment: rows and timestamps, packets the skipper sent with NONREF)."""
    container = Container(path)
    grid = SegmentGrid(FPS, SEGMENT_S) if skip else None
    frames = PyavFrames(container, short_side_px=SHORT, grid=grid)
    segments, n = [], 0
    while True:
        batch = frames.read(n * SEGMENT_S, (n + 1) * SEGMENT_S, FPS)
        if len(batch) == 0:
            break
        segments.append((batch.data.copy(), batch.pts_seconds.copy()))
        n += 1
    skipped = container.skipper.skipped if container.skipper else 0
    frames.close()
    container.close()
    return segments, skipped


def reference(path: str, n_segments: int) -> list:
    """Every frame decoded by PyAV alone; at each grid time the last frame whose timestamp
    is <= t, scaled by a fresh scaler: no skipping and no cache involved."""
    with av.open(path) as f:
        stream = f.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        frame_s = 1.0 / float(stream.average_rate)
        decoded = [(float(fr.pts * stream.time_base) - start, fr) for fr in f.decode(stream)]
    decoded.sort(key=lambda x: x[0])
    times = np.array([t for t, _ in decoded])
    w = round(decoded[0][1].width * SHORT / decoded[0][1].height)
    segments = []
    for n in range(n_segments):
        rows, stamps = [], []
        for g in grid_times(n * SEGMENT_S, (n + 1) * SEGMENT_S, FPS):
            i = int(np.searchsorted(times, g + EPS, side="right")) - 1
            if i == len(times) - 1 and g >= times[-1] + frame_s - EPS:
                break  # past the last frame
            fr = decoded[max(i, 0)][1]
            out = VideoReformatter().reformat(fr, w, SHORT, "yuv420p",
                                              dst_colorspace=Colorspace.ITU601,
                                              interpolation=INTERPOLATION,
                                              src_color_range=fr.color_range,
                                              dst_color_range=ColorRange.JPEG)  # fmt: skip
            planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
                      for p in out.planes]  # fmt: skip
            rows.append(np.concatenate([p.reshape(-1) for p in planes]))
            stamps.append(times[max(i, 0)])
        segments.append((np.stack(rows), np.array(stamps)))
    return segments


@pytest.mark.parametrize("name", list(CASES))
def test_skipping_stores_the_same_frames(videos, name):
    skipped, n_skipped = read_all(videos[name], skip=True)
    every, n_none = read_all(videos[name], skip=False)
    assert n_none == 0 and n_skipped > 0, "no packet was sent for skipping"
    assert len(skipped) == len(every) >= 3
    for (a, ta), (b, tb) in zip(skipped, every, strict=True):
        assert np.array_equal(ta, tb)
        assert np.array_equal(a, b)
    want = reference(videos[name], len(skipped))
    for i, ((a, ta), (b, tb)) in enumerate(zip(skipped, want, strict=True)):
        assert np.allclose(ta, tb, atol=1e-6), (name, i)
        assert np.array_equal(a, b), (name, i, np.flatnonzero((a != b).any(axis=1)))


def test_reads_off_the_grid_are_refused(videos):
    container = Container(videos["h264_30fps.mp4"])
    frames = PyavFrames(container, short_side_px=SHORT, grid=SegmentGrid(FPS, SEGMENT_S))
    with pytest.raises(ValueError, match="off the frames' grid"):
        frames.read(0.5, 2.5, FPS)
    with pytest.raises(ValueError, match="off the frames' grid"):
        frames.read(0.0, SEGMENT_S, 10.0)
    container.close()


@pytest.mark.parametrize(("fps", "segment_s"), [(16.0, 10.0), (16.0, 2.0), (15.0, 1.3), (7.5, 0.5)])
def test_the_grid_test_is_the_grid(fps, segment_s):
    """any_between against the output times themselves, on random intervals."""
    grid = SegmentGrid(fps, segment_s)
    times = np.concatenate([grid_times(n * segment_s, (n + 1) * segment_s, fps) for n in range(40)])
    rng = np.random.default_rng(0)
    horizon = 39 * segment_s
    for _ in range(3000):
        a = rng.uniform(-1.0, horizon)
        b = a + rng.choice([rng.uniform(0, 0.2), rng.uniform(0, 2.0)])
        want = bool(((times >= a) & (times <= b)).any())
        assert grid.any_between(a, b) == want, (a, b)
    for t in times[:50]:  # an interval that starts or ends exactly on an output time
        assert grid.any_between(t, t + 1e-4) and grid.any_between(t - 1e-4, t)
