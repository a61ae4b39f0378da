"""What a training run reports: a metrics JSONL in the run dir (and TensorBoard event
files beside it, where the tensorboard package is installed) and a live display."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console


class MetricsLog:
    """Appends one JSON object per logged step to ``run_dir/metrics.jsonl``.

    A run starting at ``start_step`` (the step of the checkpoint it resumes, 0
    for a fresh run) first drops the records after that step, so every step is
    logged once across resumes and a fresh run starts a new file. The same
    records go to TensorBoard (``TensorBoardLog``) where it is installed.
    """

    def __init__(self, run_dir: Path, *, start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            self._keep_until(start_step)
        self.tensorboard = TensorBoardLog.open(run_dir, start_step=start_step)

    def _keep_until(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut short by a killed run
                continue
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class TensorBoardLog:
    """Each record's numbers as TensorBoard scalars ``train/<key>`` at its ``step``, in
    event files (``events.out.tfevents.*``) in the run dir, flushed after every record.

    A fresh run (``start_step`` 0) removes the event files of an earlier attempt in the
    folder, as metrics.jsonl starts anew. A resumed run opens its file with
    ``purge_step = start_step + 1``: TensorBoard's readers (the web app,
    ``EventAccumulator``) then drop the steps after the checkpoint that the earlier files
    still hold, so each step reads once; the older files keep them on disk.
    The file is made at the first record: a run that fails before one leaves none.
    """

    PATTERN = "events.out.tfevents.*"

    def __init__(self, writer_class, run_dir: Path, *, start_step: int) -> None:
        self._writer_class = writer_class
        self.run_dir = Path(run_dir)
        self.start_step = start_step
        self._writer = None
        if start_step == 0:
            for old in self.run_dir.glob(self.PATTERN):
                old.unlink(missing_ok=True)

    @classmethod
    def open(cls, run_dir: Path, *, start_step: int) -> TensorBoardLog | None:
        """A log for ``run_dir``, or None where tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
        except ImportError:  # torch says "TensorBoard logging requires TensorBoard ..."
            return None
        return cls(SummaryWriter, run_dir, start_step=start_step)

    def write(self, record: dict) -> None:
        if self._writer is None:
            purge = self.start_step + 1 if self.start_step > 0 else None
            self._writer = self._writer_class(log_dir=str(self.run_dir), purge_step=purge)
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"train/{key}", value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# The task's normalised attention entropies and their short names on the progress line.
ENTROPIES = {"entropy_alpha_v": "alpha_v", "entropy_alpha_a": "alpha_a",
             "entropy_beta_v": "beta_v", "entropy_beta_a": "beta_a"}  # fmt: skip


class Display:
    """A rich status line on a terminal, plain log lines elsewhere (rank 0 only)."""

    def __init__(self, total_steps: int, *, enabled: bool) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.status = None
        if enabled and self.console.is_terminal:
            self.status = self.console.status("pretrain: starting")
            self.status.start()
        self.last_plain = 0.0

    def update(self, record: dict) -> None:
        if not self.enabled:
            return
        terms = "  ".join(
            f"{k} {record[k]:.4f}"
            for k in ("loss", "nce", "att_v", "att_a", "sync_acc")
            if k in record
        )
        entropies = "  ".join(
            f"{label} {record[k]:.2f}" for k, label in ENTROPIES.items() if k in record
        )
        if entropies:  # H / log N: 1 = uniform over the tokens (a collapse), 0 = one token
            terms += f"  H/logN {entropies}"
        line = (
            f"step {record['step']}/{self.total}  {terms}  lr {record['lr']:.2e}  "
            f"{record['samples_per_s']:.1f} samples/s  data wait {100 * record['data_wait_frac']:.0f}%"
        )
        if self.status is not None:
            self.status.update(line)
        elif time.monotonic() - self.last_plain >= 5.0 or record["step"] == self.total:
            self.last_plain = time.monotonic()
            print(f"pretrain: {line}", file=sys.stderr, flush=True)

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
