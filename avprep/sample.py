"""The samples of one video: probe, decode segment by segment, encode, write.

Memory stays bounded by one segment whatever the video's length: frames come
from the decoder a segment at a time and audio is streamed from ffmpeg.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Callable

import numpy as np

from avprep import manifest, schema
from avprep.config import ShardConfig
from avprep.decode import AudioReader, open_frames
from avprep.discover import Input
from avprep.errors import MediaError, SkipInput
from avprep.probe import MediaInfo, probe
from avprep.spectrogram import LogMel
from avprep.tools import ffmpeg_bin
from avprep.writer import ShardWriter

EPS = 1e-6
TRUNCATED_S = 1.0  # a decoder that fails this much before the stated end: a truncated file


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    cmd = [ffmpeg_bin(), "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(sample_rate),
           "-ac", "1", "-i", "pipe:", "-c:a", "flac", "-sample_fmt", "s16", "-f", "flac", "pipe:"]  # fmt: skip
    proc = subprocess.run(cmd, input=wave.astype(np.float32).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise MediaError(f"flac encode failed: {proc.stderr.decode(errors='replace')[-200:]}")
    return proc.stdout


def check_policy(info: MediaInfo, cfg: ShardConfig) -> None:
    """Raise SkipInput for inputs the policy leaves out."""
    if info.video is None:
        raise SkipInput("no_video")
    if info.audio is None:
        raise SkipInput("no_audio")
    if info.duration_s is not None and info.duration_s < cfg.min_seconds - EPS:
        raise SkipInput("too_short")


def process_video(
    inp: Input,
    cfg: ShardConfig,
    writer: ShardWriter,
    logmel: LogMel,
    *,
    threads: int = 1,
    on_segment: Callable[[int], None] | None = None,
) -> dict:
    """Write every segment of ``inp`` to ``writer``; return its ok manifest row.

    decord decodes the frames where it can; if it cannot open the file, or fails
    part way, the video's samples are rolled back and the ffmpeg pipe decodes it
    from the start. Raises SkipInput or MediaError otherwise.
    """
    t0 = time.perf_counter()
    if not os.path.exists(inp.path):
        broken = os.path.islink(inp.path)
        raise MediaError("missing: broken symlink" if broken else "missing: no such file")
    info = probe(inp.path, timeout_s=cfg.timeout_seconds)
    try:
        check_policy(info, cfg)
        return _write_video(inp, info, cfg, writer, logmel, threads, on_segment, t0)
    except MediaError as e:
        e.media = {**info.facts(), "duration_s": info.duration_s, **e.media}
        raise


def _write_video(inp, info, cfg, writer, logmel, threads, on_segment, t0) -> dict:
    for decoder in ("decord", "ffmpeg"):
        shard = writer.begin_video()
        try:
            n, duration = _write_segments(
                inp, info, cfg, writer, logmel, decoder, threads, on_segment
            )
            break
        except MediaError as e:
            writer.rollback_video()
            if decoder == "ffmpeg" or not e.reason.startswith("decord"):
                raise
        except BaseException:
            writer.rollback_video()
            raise
    row = manifest.make_row(
        source=inp.source,
        path=inp.real_path,
        input_key=inp.input_key,
        video_id=inp.video_id,
        status=manifest.OK,
        n_segments=n,
        shards=[shard],
        duration_s=round(duration, 6),
        label=inp.label,
        extra_json=json.dumps(inp.extra),
        media={**info.facts(), "decoder": decoder},
        seconds=round(time.perf_counter() - t0, 3),
    )
    writer.end_video(row)
    return row


def _write_segments(inp, info, cfg, writer, logmel, decoder, threads, on_segment):
    """Write the samples of one video with one decoder; (n_segments, duration_s)."""
    frames = open_frames(
        inp.path, info, short_side_px=cfg.short_side_px, threads=threads, decoder=decoder
    )
    audio = AudioReader(inp.path, info.audio, info.video.start_s, cfg.sample_rate_hz)
    sr = cfg.sample_rate_hz
    media = {**info.facts(), "decoder": frames.name, "duration_s": info.duration_s}
    limit = min(info.duration_s or float("inf"), frames.end_s)
    n = 0
    try:
        while True:
            start = n * cfg.segment_seconds
            end = min(start + cfg.segment_seconds, limit)
            if end - start < cfg.min_seconds - EPS:
                break
            images, times = frames.read(start, end, cfg.fps)
            limit = min(limit, frames.end_s)
            end = min(end, limit)
            if end - start < cfg.min_seconds - EPS or len(images) == 0:
                break
            images, times = images[times < end], times[times < end]
            first, last = round(start * sr), round(end * sr)
            audio.skip_to(first)
            wave = audio.read(last - first)
            audio.check()
            spec = logmel(wave)
            key = schema.make_key(inp.video_id, n)
            meta = {
                "schema_version": schema.SCHEMA_VERSION,
                "key": key,
                "video_id": inp.video_id,
                "source": inp.source,
                "input_key": inp.input_key,
                "segment": n,
                "start_s": round(start, 6),
                "end_s": round(end, 6),
                "frame_times": [round(float(t), 6) for t in times],
                "fps": cfg.fps,
                "sample_rate": sr,
                "spec": logmel.preset.to_json(),
                "spec_start_s": round(first / sr, 6),
                "n_frames": len(images),
                "n_columns": int(spec.shape[1]),
                "frame_size": list(frames.size),
                "media": media,
                "label": inp.label,
                "extra": inp.extra,
            }
            members = {schema.JSON: json.dumps(meta, separators=(",", ":")).encode()}
            for i, image in enumerate(images):
                members[schema.frame_member(i)] = frames.encode_jpeg(image, cfg.jpeg_quality)
            members[schema.SPEC] = encode_npy(spec)
            if cfg.keep_audio:
                members[schema.FLAC] = encode_flac(wave, sr)
            writer.add(key, members)
            n += 1
            if on_segment is not None:
                on_segment(n)
    finally:
        frames.close()
        audio.close()
    stated = info.duration_s
    if frames.error and stated and limit < stated - TRUNCATED_S:
        raise MediaError(
            f"decode_error: truncated at {limit:.2f} s of {stated:.2f} s: {frames.error}"[:300]
        )
    if n == 0:
        raise SkipInput("too_short")
    return n, (limit if limit != float("inf") else n * cfg.segment_seconds)
