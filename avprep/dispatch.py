"""The worker pool behind ``shard_videos``: dispatch, timeouts, replacement, bookkeeping.

Inputs go to worker processes one at a time. A worker that makes no progress on a
file for ``timeout_seconds`` (or dies) is killed with its process group and
replaced: that file is recorded as failed, and the files it had finished but not
yet committed are redone. Each worker talks over its own pipe, so a killed
worker garbles no one else's messages.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from avprep import manifest
from avprep.config import ShardConfig
from avprep.discover import Input
from avprep.errors import AvprepError
from avprep.outdir import OutputDir
from avprep.remote import StoreError
from avprep.report import Progress, ShardReport
from avprep.worker import worker_main
from avprep.worker_messages import Commit, Done, Exit, Fatal, Ready, Row, Segment
from avprep.worker_start import single_threaded, worker_context


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
    """One message from any worker (``avprep.worker_messages``), or (None, None) after
    ``timeout_s``."""
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


class Dispatcher:
    """Runs ``todo`` (indices into ``items``) on worker processes, updating ``report``."""

    def __init__(self, items: list[Input], cfg: ShardConfig, out: OutputDir, report: ShardReport,
                 progress: Progress) -> None:  # fmt: skip
        self.items, self.cfg, self.out, self.report, self.progress = (
            items,
            cfg,
            out,
            report,
            progress,
        )
        self.ctx = worker_context()
        self.pending: deque[int] = deque()
        self.workers: dict[int, _Worker] = {}
        self.other_rows: list[dict] = []  # skipped / failed rows
        self.next_id = 0
        self.live_segments: dict[int, int] = {}  # input -> segments written so far
        self.ok_segments: dict[int, int] = {}  # ok input -> its segments (taken back if redone)

    def run(self, todo: list[int]) -> list[dict]:
        """Process ``todo``; returns the skipped/failed rows."""
        if not todo:
            return []
        single_threaded()
        self.pending.extend(todo)
        for _ in range(min(self.cfg.workers, len(todo))):
            self.spawn()
        try:
            stopping = False
            while self.workers:
                self.assign()
                if (
                    not self.pending
                    and not stopping
                    and all(w.task is None for w in self.workers.values())
                ):
                    stopping = True
                    for w in self.workers.values():
                        w.tasks.put(None)
                msg, w = _next_message(self.workers, 0.5)
                if msg is not None:
                    self.handle(msg, w)
                self.check_health()
                if stopping and self.pending:
                    stopping = False  # a replaced worker put inputs back
        finally:
            for w in self.workers.values():  # only after an error or Ctrl-C
                _kill(w.proc)
                w.conn.close()
        return self.other_rows

    def spawn(self) -> None:
        tasks = self.ctx.Queue()
        conn, child_conn = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=worker_main,
            args=(
                self.next_id,
                self.cfg.to_dict(),
                self.out.run,
                tasks,
                child_conn,
                os.getcwd(),
                dict(os.environ),
                os.getpid(),
            ),  # fmt: skip
            name=f"avprep-worker-{self.next_id}",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # the worker holds the only writing end: its death reads as EOF
        self.workers[self.next_id] = _Worker(
            self.next_id, proc, tasks, conn, last_progress=time.monotonic()
        )
        self.next_id += 1

    def assign(self) -> None:
        for w in self.workers.values():
            if w.ready and w.task is None and self.pending:
                w.task = self.pending.popleft()
                w.last_progress = time.monotonic()
                w.tasks.put((w.task, self.items[w.task]))

    def handle(self, msg, w: _Worker) -> None:
        """One message from worker ``w`` (``avprep.worker_messages``)."""
        report = self.report
        w.last_progress = time.monotonic()
        match msg:
            case Ready():
                w.ready = True
            case Segment(index=index, segments=n):
                self.live_segments[index] = n
            case Done(index=index):
                self.ok_segments[index] = self.live_segments.pop(index, 0)
                report.n_segments += self.ok_segments[index]
                report.counts[manifest.OK] += 1
                w.uncommitted.append(index)
                w.task = None
            case Row(index=index, row=row):
                self.other_rows.append(row)
                report.counts[row["status"]] += 1
                report.reasons[row["reason"]] += 1
                self.progress.log(f"{row['status']} ({row['reason']}): {self.items[index].source}")
                self.live_segments.pop(index, None)
                w.task = None
            case Commit(shard=shard, video_ids=ids):
                report.shards.append(shard)
                done = set(ids)
                w.uncommitted = [i for i in w.uncommitted if self.items[i].video_id not in done]
            case Fatal(error=error):  # the output cannot be written: stop (the rest are killed)
                raise StoreError(error)
            case Exit():
                w.proc.join()
                w.conn.close()
                del self.workers[w.id]
        self.progress.update(report, segments=report.n_segments + sum(self.live_segments.values()))

    def check_health(self) -> None:
        """Replace workers stuck past the timeout, or dead with all their messages read."""
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.task is not None and now - w.last_progress > self.cfg.timeout_seconds:
                self.replace(w, "timeout")
            elif w.proc.is_alive() or not w.eof:
                continue  # alive, or dead with messages still to read
            elif not w.ready:
                raise AvprepError(
                    f"a worker process failed to start (exit code {w.proc.exitcode}); from a "
                    'script, call shard_videos under `if __name__ == "__main__":` (workers '
                    "start afresh and import the script again)"
                )
            else:
                self.replace(w, f"worker died (exit code {w.proc.exitcode})")

    def record(self, index: int, status: str, reason: str, seconds: float = 0.0) -> None:
        inp = self.items[index]
        self.other_rows.append(
            manifest.make_row(
                source=inp.source, path=inp.real_path, input_key=inp.input_key,
                video_id=inp.video_id, status=status, reason=reason,
                n_segments=0, shards=[], label=inp.label, rank=self.cfg.rank, run=self.out.run,
                seconds=seconds,
            )
        )  # fmt: skip
        self.report.counts[status] += 1
        self.report.reasons[reason] += 1
        self.progress.log(f"{status} ({reason}): {inp.source}")

    def replace(self, w: _Worker, why: str) -> None:
        """Kill ``w``; fail its current input; redo what it had not committed."""
        _kill(w.proc)
        w.conn.close()
        self.out.clean_worker(w.id)
        if w.task is not None:
            self.record(w.task, manifest.FAILED, why, time.monotonic() - w.last_progress)
            self.live_segments.pop(w.task, None)
        committed = self.out.recover_worker(w.id)  # it may have died between the two renames
        for index in reversed(w.uncommitted):
            if self.items[index].video_id not in committed:
                self.report.counts[manifest.OK] -= 1
                self.report.n_segments -= self.ok_segments.pop(index, 0)
                self.pending.appendleft(index)
        del self.workers[w.id]
        if self.pending:
            self.spawn()
