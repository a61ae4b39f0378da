"""What a training run reports: a metrics JSONL in the run dir and a live display."""

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
    logged once across resumes and a fresh run starts a new file.
    """

    def __init__(self, run_dir: Path, *, start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            self._keep_until(start_step)

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
            f"{k} {record[k]:.4f}" for k in ("loss", "nce", "att_v", "att_a") if k in record
        )
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
