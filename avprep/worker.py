"""A shard worker process: takes one input at a time, writes its own shards.

A URL input is decoded as it downloads (``remote_inputs.process_remote``). A store that
cannot be written after its retries (``remote.StoreError``) stops the whole run: the
parent is told (``fatal``) and the same command resumes later.

Frames never cross processes: the worker decodes, encodes and writes; the
parent only receives small messages (start, segment, done, commit, exit).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

from avprep import manifest, schema
from avprep.config import ShardConfig, available_cpus
from avprep.errors import MediaError, SkipInput
from avprep.outdir import open_store
from avprep.remote import StoreError, scrub
from avprep.remote_inputs import process_remote
from avprep.tools import die_with, die_with_parent
from avprep.worker_messages import Commit, Done, Exit, Fatal, Ready, Row, Segment


def worker_main(
    worker_id: int,
    cfg_dict: dict,
    run: int,
    tasks: mp.Queue,
    results: Connection,
    cwd: str,
    env: dict[str, str],
    command: int,
) -> None:
    os.chdir(cwd)  # a forkserver's child has the server's folder and environment:
    os.environ.clear()  # take the command's
    os.environ.update(env)
    die_with_parent()  # and its ffmpeg/ffprobe children die with it (tools.popen)
    os.setpgid(0, 0)  # its own process group, so the parent can kill it with its ffmpegs
    die_with(command)  # the command: a forkserver's child has the server for parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides on Ctrl-C
    cfg = ShardConfig.from_dict(cfg_dict)
    store = open_store(cfg.out_dir, cfg.rank)
    threads = max(1, available_cpus() // cfg.workers)  # decord's and the ffmpeg pipe's

    def on_commit(path: Path, rows: list[dict]) -> None:
        for row in rows:
            row["rank"], row["run"] = cfg.rank, run
        store.write_part(f"{schema.MANIFEST_DIR}/{path.stem}.parquet", rows)
        results.send(Commit(worker_id, path.name, [r["video_id"] for r in rows]))

    from avprep.writer import ShardWriter  # noqa: PLC0415

    writer = ShardWriter(
        store.staging,
        stem_for=lambda seq: schema.shard_stem(cfg.rank, run, worker_id, seq),
        max_samples=cfg.shard_max_samples,
        max_bytes=cfg.shard_max_bytes,
        on_commit=on_commit,
        publish=store.publish,
    )
    try:
        _work(worker_id, cfg, run, tasks, results, writer, store, threads)
    except StoreError as e:  # the output cannot be written (after retries): the run stops
        writer.abort()
        results.send(Fatal(worker_id, str(e)))


def _work(worker_id, cfg, run, tasks, results, writer, store, threads) -> None:
    from avprep.sample import process_video  # noqa: PLC0415  (imports PyAV, decord)
    from avprep.spectrogram import LogMel  # noqa: PLC0415

    spool = store.spool / f"w{worker_id:02d}"
    logmel = LogMel(cfg.spec_preset, cfg.sample_rate_hz)
    parent = mp.parent_process()
    results.send(Ready(worker_id))
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                writer.abort()
                return
            continue
        if task is None:
            break
        index, inp = task
        t0 = time.perf_counter()

        def on_segment(n: int, index: int = index) -> None:
            results.send(Segment(worker_id, index, n))

        try:
            if inp.remote:
                process_remote(inp, cfg, writer, logmel, spool, threads=threads,
                               on_segment=on_segment)  # fmt: skip
            else:
                process_video(inp, cfg, writer, logmel, threads=threads, on_segment=on_segment)
            results.send(Done(worker_id, index))
            continue
        except StoreError:
            raise
        except SkipInput as e:
            status, reason, media = manifest.SKIPPED, e.reason, e.media
        except MediaError as e:
            status, reason, media = manifest.FAILED, e.reason, e.media
        except Exception as e:  # a bad file must never stop the run
            status, reason, media = manifest.FAILED, f"error: {type(e).__name__}: {e}"[:300], {}
        if inp.remote:  # a library's message may name the URL with its credentials
            reason = scrub(reason)
        media = dict(media)
        row = manifest.make_row(
            source=inp.source,
            path=inp.real_path,
            input_key=inp.input_key,
            video_id=inp.video_id,
            status=status,
            reason=reason,
            n_segments=0,
            shards=[],
            duration_s=media.pop("duration_s", None),
            label=inp.label,
            extra_json=json.dumps(inp.extra),
            media=media,
            rank=cfg.rank,
            run=run,
            seconds=round(time.perf_counter() - t0, 3),
        )
        results.send(Row(worker_id, index, row))
    writer.commit()
    results.send(Exit(worker_id))
