"""``shard_videos(inputs, cfg) -> ShardReport``: the library call behind ``avprep shard``.

The parent process discovers inputs, hands them one at a time to worker
processes and keeps the books. A worker that makes no progress on a file for
``timeout_seconds`` (or dies) is killed and replaced: that file is recorded as
failed, and the files it had finished but not yet committed are redone. No
per-file problem is ever raised.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from avprep import manifest
from avprep.config import ShardConfig
from avprep.discover import Input, discover, partition
from avprep.errors import AvprepError
from avprep.outdir import OutputDir
from avprep.tools import require_ffmpeg
from avprep.worker import worker_main


@dataclass
class ShardReport:
    out_dir: str
    rank: int
    world_size: int
    run: int
    n_inputs: int  # this rank's share
    n_already_done: int
    counts: Counter = field(default_factory=Counter)  # status -> inputs this run
    reasons: Counter = field(default_factory=Counter)  # failure/skip reason -> inputs
    n_segments: int = 0
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unaccounted: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return self.counts[manifest.FAILED]

    def exit_code(self, *, strict: bool) -> int:
        if self.unaccounted:
            return 1
        return 1 if strict and self.n_failed else 0


class Progress:
    """What the parent tells a person; the CLI supplies a rich or plain one."""

    def start(self, total: int, done: int) -> None: ...
    def update(self, report: ShardReport, *, segments: int) -> None: ...
    def log(self, message: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class _Worker:
    id: int
    proc: mp.Process
    tasks: mp.Queue
    conn: Connection  # this worker's messages: a killed worker garbles no one else's
    task: int | None = None
    last_progress: float = 0.0
    ready: bool = False
    uncommitted: list[int] = field(default_factory=list)  # ok inputs not yet in a committed shard
    eof: bool = False  # its end of the pipe is closed: it exited or died


def _next_message(
    workers: dict[int, _Worker], timeout_s: float
) -> tuple[tuple | None, _Worker | None]:
    """One message from any worker, or (None, None) after ``timeout_s``."""
    live = {w.conn: w for w in workers.values() if not w.eof}
    if not live:
        time.sleep(timeout_s)
    for conn in wait(list(live), timeout=timeout_s) if live else []:
        try:
            return conn.recv(), live[conn]
        except (EOFError, OSError):
            live[conn].eof = True  # the liveness checks deal with it
    return None, None


def _kill(proc: mp.Process) -> None:
    """SIGKILL a worker and its process group: the ffmpeg/ffprobe it started (one stuck
    opening a stalled file would outlive it) go with it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own group
    if proc.is_alive():
        proc.kill()  # it had not made its group yet
    proc.join()


def _message(msg: str, inp: Input) -> str:
    return f"{msg}: {inp.source}"


def shard_videos(
    inputs: list[str], cfg: ShardConfig, *, progress: Progress | None = None
) -> ShardReport:
    """Shard this rank's share of ``inputs`` into ``cfg.out_dir``; see the module doc."""
    require_ffmpeg()
    progress = progress or Progress()
    t0 = time.perf_counter()
    items = partition(discover(inputs), cfg.rank, cfg.world_size)
    out = OutputDir(cfg.out_dir, cfg.rank)
    out.open(cfg)
    try:
        out.recover_orphans()
        out.drop_other_rows()
        done = out.done_video_ids()
        todo = [i for i, inp in enumerate(items) if inp.video_id not in done]
        report = ShardReport(
            out_dir=str(cfg.out_dir),
            rank=cfg.rank,
            world_size=cfg.world_size,
            run=out.run,
            n_inputs=len(items),
            n_already_done=len(items) - len(todo),
        )
        progress.start(len(items), report.n_already_done)
        other_rows = _run_workers(items, todo, cfg, out, report, progress)
        if other_rows:
            manifest.write_part(out.other_part(), other_rows)
        final = manifest.read(cfg.out_dir)
        seen = Counter(final.column("video_id").to_pylist())
        report.unaccounted = [inp.source for inp in items if seen[inp.video_id] != 1]
        report.seconds = time.perf_counter() - t0
        progress.update(report, segments=report.n_segments)
        return report
    finally:
        progress.stop()
        out.close()


def _run_workers(
    items: list[Input],
    todo: list[int],
    cfg: ShardConfig,
    out: OutputDir,
    report: ShardReport,
    progress: Progress,
) -> list[dict]:
    """Dispatch ``todo`` to worker processes; returns the skipped/failed rows."""
    if not todo:
        return []
    ctx = mp.get_context("spawn")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(
            var, "1"
        )  # workers are the parallelism; a threaded BLAS only thrashes
    pending: deque[int] = deque(todo)
    workers: dict[int, _Worker] = {}
    other_rows: list[dict] = []
    next_id = 0
    live_segments: dict[int, int] = {}  # input -> segments written so far
    ok_segments: dict[int, int] = {}  # ok input -> its segments (taken back if redone)

    def spawn() -> None:
        nonlocal next_id
        tasks = ctx.Queue()
        conn, child_conn = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=worker_main,
            args=(next_id, cfg.to_dict(), out.run, tasks, child_conn),
            name=f"avprep-worker-{next_id}",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # the worker holds the only writing end: its death reads as EOF
        workers[next_id] = _Worker(next_id, proc, tasks, conn, last_progress=time.monotonic())
        next_id += 1

    def record(index: int, status: str, reason: str, seconds: float = 0.0) -> None:
        inp = items[index]
        other_rows.append(
            manifest.make_row(
                source=inp.source, video_id=inp.video_id, status=status, reason=reason,
                n_segments=0, shards=[], label=inp.label, rank=cfg.rank, run=out.run,
                seconds=seconds,
            )
        )  # fmt: skip
        report.counts[status] += 1
        report.reasons[reason] += 1
        progress.log(_message(f"{status} ({reason})", inp))

    def replace(w: _Worker, why: str) -> None:
        """Kill ``w``; fail its current input; redo what it had not committed."""
        _kill(w.proc)
        w.conn.close()
        for tmp in out.worker_temporaries(w.id):
            tmp.unlink(missing_ok=True)
        if w.task is not None:
            record(w.task, manifest.FAILED, why, time.monotonic() - w.last_progress)
            live_segments.pop(w.task, None)
        committed = out.recover_worker(w.id)  # it may have died between the two renames
        for index in reversed(w.uncommitted):
            if items[index].video_id not in committed:
                report.counts[manifest.OK] -= 1
                report.n_segments -= ok_segments.pop(index, 0)
                pending.appendleft(index)
        del workers[w.id]
        if pending:
            spawn()

    for _ in range(min(cfg.workers, len(todo))):
        spawn()
    try:
        stopping = False
        while workers:
            for w in workers.values():
                if w.ready and w.task is None and pending:
                    w.task = pending.popleft()
                    w.last_progress = time.monotonic()
                    w.tasks.put((w.task, items[w.task]))
            if not pending and not stopping and all(w.task is None for w in workers.values()):
                stopping = True
                for w in workers.values():
                    w.tasks.put(None)
            msg, w = _next_message(workers, 0.5)
            if msg is not None:
                kind, wid = msg[0], w.id
                w.last_progress = time.monotonic()
                if kind == "ready":
                    w.ready = True
                elif kind == "segment":
                    live_segments[msg[2]] = msg[3]
                elif kind == "ok":
                    index = msg[2]
                    ok_segments[index] = live_segments.pop(index, 0)
                    report.n_segments += ok_segments[index]
                    report.counts[manifest.OK] += 1
                    w.uncommitted.append(index)
                    w.task = None
                elif kind == "row":
                    row = msg[3]
                    other_rows.append(row)
                    report.counts[row["status"]] += 1
                    report.reasons[row["reason"]] += 1
                    progress.log(_message(f"{row['status']} ({row['reason']})", items[msg[2]]))
                    live_segments.pop(msg[2], None)
                    w.task = None
                elif kind == "commit":
                    report.shards.append(msg[2])
                    committed = set(msg[3])
                    w.uncommitted = [i for i in w.uncommitted if items[i].video_id not in committed]
                elif kind == "exit":
                    w.proc.join()
                    w.conn.close()
                    del workers[wid]
                progress.update(report, segments=report.n_segments + sum(live_segments.values()))
            now = time.monotonic()
            for w in list(workers.values()):
                if w.task is not None and now - w.last_progress > cfg.timeout_seconds:
                    replace(w, "timeout")
                elif w.proc.is_alive() or not w.eof:
                    continue  # alive, or dead with messages still to read
                elif not w.ready:
                    raise AvprepError(
                        f"a worker process failed to start (exit code {w.proc.exitcode})"
                    )
                else:
                    replace(w, f"worker died (exit code {w.proc.exitcode})")
            if stopping and pending:
                stopping = False  # a replaced worker put inputs back
    finally:
        for w in workers.values():  # only after an error or Ctrl-C
            _kill(w.proc)
            w.conn.close()
    return other_rows
