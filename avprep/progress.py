"""What ``avprep shard`` shows a person: a rich bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from avprep.report import Progress, ShardReport


class RichProgress(Progress):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = RichBar(
            TextColumn("[bold]shard"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("inputs  {task.fields[segments]} segments  {task.fields[rate]}"),
            TextColumn("[red]{task.fields[failed]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = None
        self.t0 = time.monotonic()

    def start(self, total: int, done: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("shard", total=total, completed=done, segments=0, rate="",
                                      failed="")  # fmt: skip
        self.done0 = done

    def update(self, report: ShardReport, *, segments: int) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        failed = report.counts["failed"]
        self.bar.update(
            self.task,
            completed=self.done0 + sum(report.counts.values()),
            segments=segments,
            rate=f"{segments / elapsed:.1f} seg/s",
            failed=f"{failed} failed" if failed else "",
        )

    def log(self, message: str) -> None:
        self.bar.console.print(f"[yellow]{escape(message)}", markup=True, highlight=False)

    def stop(self) -> None:
        self.bar.stop()


class PlainProgress(Progress):
    """One line per problem and a status line at most every ``every_s`` seconds."""

    def __init__(self, stream=sys.stderr, every_s: float = 10.0) -> None:
        self.stream = stream
        self.every_s = every_s
        self.t0 = self.last = time.monotonic()
        self.total = self.done0 = 0
        self.finished = False

    def start(self, total: int, done: int) -> None:
        self.total, self.done0 = total, done
        self._print(f"shard: {total} inputs, {done} already done")

    def update(self, report: ShardReport, *, segments: int) -> None:
        now = time.monotonic()
        finished = self.done0 + sum(report.counts.values())
        last_line = finished == self.total and not self.finished
        if now - self.last >= self.every_s or last_line:
            self.last, self.finished = now, finished == self.total
            rate = segments / max(now - self.t0, 1e-9)
            self._print(
                f"shard: {finished}/{self.total} inputs, {segments} segments, {rate:.1f} seg/s, "
                f"{report.counts['failed']} failed"
            )

    def log(self, message: str) -> None:
        self._print(message)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def make_progress(*, quiet: bool, console: Console) -> Progress:
    if quiet:
        return Progress()
    return RichProgress(console) if console.is_terminal else PlainProgress()


def summary_table(report: ShardReport) -> Table:
    table = Table(title=f"avprep shard: rank {report.rank}/{report.world_size}, run {report.run}")
    table.add_column("")
    table.add_column("inputs", justify="right")
    table.add_row("this rank's share", str(report.n_inputs))
    table.add_row("already done (resumed)", str(report.n_already_done))
    for status in ("ok", "skipped", "failed"):
        table.add_row(status, str(report.counts[status]))
    for reason, n in sorted(report.reasons.items()):
        table.add_row(escape(f"  {reason}"), str(n))
    table.add_row("segments written", str(report.n_segments))
    table.add_row("shards written", str(len(report.shards)))
    rate = report.n_segments / report.seconds if report.seconds else 0.0
    table.add_row("seconds", f"{report.seconds:.1f} ({rate:.1f} segments/s)")
    if report.unaccounted:
        table.add_row("[red]unaccounted", str(len(report.unaccounted)))
    return table
