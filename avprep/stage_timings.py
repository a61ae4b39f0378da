"""``timings.json`` of a resumable job (``avprep evaluate``): the seconds each stage took.

A stage stopped part way (Ctrl-C, SIGTERM) keeps the seconds it had spent as
``"<stage> (stopped)"``; the run that finishes it adds them to its own, so a stage's
figure is the time spent on it over every run of the command (a SIGKILL loses only the
seconds of the run it killed). Written whole each time (a temporary file, renamed).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

STOPPED = " (stopped)"


class StageTimings:
    """Seconds per stage, read from and kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished in some run (its seconds are recorded)."""
        return stage in self.data

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time the block as ``stage``, adding what stopped runs of it spent."""
        before = self.data.get(stage + STOPPED, 0.0)
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.data[stage + STOPPED] = round(before + time.monotonic() - t0, 1)
            self._save()
            raise
        self.data.pop(stage + STOPPED, None)
        self.data[stage] = round(before + time.monotonic() - t0, 1)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
