"""The samples of one video: probe, decode segment by segment, encode, write.

Memory stays bounded by one segment whatever the video's length: frames come
from the decoder a segment at a time and audio is streamed beside them (from
the same PyAV container, or from an ffmpeg process).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from avprep import manifest, schema
from avprep.config import ShardConfig
from avprep.decode import AudioReader, open_frames
from avprep.discover import Input
from avprep.errors import MediaError, SkipInput
from avprep.media.audio import PyavAudio
from avprep.media.container import Container
from avprep.media.decoder import Decoder
from avprep.media.flac import encode_flac
from avprep.media.frames import PyavFrames
from avprep.media.unshown import SegmentGrid
from avprep.probe import MediaInfo, probe
from avprep.read_sample import encode_npy, sample_members  # noqa: F401  (encode_npy: old home)
from avprep.spectrogram import LogMel
from avprep.tools import has_ffmpeg
from avprep.urls import remote_scheme
from avprep.writer import ShardWriter

EPS = 1e-6
TRUNCATED_S = 1.0  # a decoder that fails this much before the stated end: a truncated file


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

    ``cfg.decoder`` names the decoders to try in order (``Decoder.attempts``): when
    one cannot open the file, or fails part way, the video's samples are rolled
    back and the next decodes it from the start. The ffmpeg pipe is left out of
    ``auto`` where no ffmpeg is installed. Raises SkipInput or MediaError otherwise.
    """
    t0 = time.perf_counter()
    if not remote_scheme(inp.path) and not os.path.exists(inp.path):  # a URL: opened remotely
        broken = os.path.islink(inp.path)
        raise MediaError("missing: broken symlink" if broken else "missing: no such file")
    attempts = Decoder(cfg.decoder).attempts
    if len(attempts) > 1 and attempts[-1] == "ffmpeg" and not has_ffmpeg():
        attempts = attempts[:-1]
    probed: list[MediaInfo] = []  # ffprobe's facts, shared by decord and the ffmpeg pipe
    for i, decoder in enumerate(attempts):
        try:
            return _write_video(inp, cfg, writer, logmel, decoder, threads, on_segment, probed, t0)
        except SkipInput:
            raise
        except MediaError as e:
            last = i == len(attempts) - 1
            if last or (decoder == "decord" and not e.reason.startswith("decord")):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _write_video(inp, cfg, writer, logmel, decoder, threads, on_segment, probed, t0) -> dict:
    container = Container(inp.path) if decoder == "pyav" else None
    try:
        if container is not None:
            info = container.info
        else:
            if not probed:
                probed.append(probe(inp.path, timeout_s=cfg.timeout_seconds))
            info = probed[0]
        try:
            check_policy(info, cfg)
            shard = writer.begin_video()
            try:
                frames, audio = _open_streams(decoder, container, inp.path, info, cfg, threads)
                n, duration = _write_segments(inp, info, cfg, writer, logmel, frames, audio,
                                              on_segment)  # fmt: skip
            except BaseException:
                writer.rollback_video()
                raise
        except MediaError as e:
            e.media = {**info.facts(), "duration_s": info.duration_s, **e.media}
            raise
    finally:
        if container is not None:
            container.close()
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
        media={**info.facts(), "decoder": frames.name},
        seconds=round(time.perf_counter() - t0, 3),
    )
    writer.end_video(row)
    return row


def _open_streams(decoder, container, path, info, cfg, threads):
    """(frames, audio) of one decoder: PyAV's from the opened container, else decord or
    the ffmpeg pipe with an ffmpeg process for the audio."""
    if decoder == "pyav":
        grid = SegmentGrid(cfg.fps, cfg.segment_seconds)  # the frames no segment shows: skipped
        frames = PyavFrames(container, short_side_px=cfg.short_side_px, grid=grid)
        audio = PyavAudio(container, video_start_s=info.video.start_s,
                          sample_rate=cfg.sample_rate_hz)  # fmt: skip
        return frames, audio
    frames = open_frames(path, info, short_side_px=cfg.short_side_px, threads=threads,
                         decoder=decoder)  # fmt: skip
    try:
        return frames, AudioReader(path, info.audio, info.video.start_s, cfg.sample_rate_hz)
    except BaseException:
        frames.close()
        raise


def _write_segments(inp, info, cfg, writer, logmel, frames, audio, on_segment):
    """Write the samples of one video with one decoder; (n_segments, duration_s)."""
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
            batch = frames.read(start, end, cfg.fps)
            limit = min(limit, frames.end_s)
            end = min(end, limit)
            if end - start < cfg.min_seconds - EPS or len(batch) == 0:
                break
            batch = batch.before(end)
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
                "frame_times": [round(float(t), 6) for t in batch.pts_seconds],
                "fps": cfg.fps,
                "sample_rate": sr,
                "spec": logmel.preset.to_json(),
                "spec_start_s": round(first / sr, 6),
                "n_frames": len(batch),
                "n_columns": int(spec.shape[1]),
                "frame_size": list(frames.size),
                "media": media,
                "label": inp.label,
                "extra": inp.extra,
            }
            jpegs = [frames.encode_jpeg(image, cfg.jpeg_quality) for image in batch.data]
            flac = encode_flac(wave, sr) if cfg.keep_audio else None
            members = sample_members(meta, jpegs, spec, flac)  # schema.SCHEMA_VERSION's
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
