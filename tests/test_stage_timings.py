"""timings.json of a resumable job (avprep/stage_timings.py): a stage stopped part way keeps
the seconds it spent, and the run that finishes it adds them to its own."""

from __future__ import annotations

import json
import time

import pytest

from avprep.stage_timings import StageTimings


def test_a_stopped_stage_counts_in_the_run_that_finishes_it(tmp_path):
    path = tmp_path / "timings.json"
    first = StageTimings(path)
    with pytest.raises(KeyboardInterrupt), first.timed("train a"):
        time.sleep(0.2)
        raise KeyboardInterrupt
    stopped = json.loads(path.read_text())
    assert list(stopped) == ["train a (stopped)"] and stopped["train a (stopped)"] >= 0.2
    again = StageTimings(path)  # the command run again
    assert not again.done("train a")
    with again.timed("train a"):
        pass
    with again.timed("train b"):
        pass
    finished = json.loads(path.read_text())
    assert list(finished) == ["train a", "train b"]  # the stopped record is gone
    assert finished["train a"] >= stopped["train a (stopped)"] and StageTimings(path).done("train a")
