"""What a shard run reports: ``ShardReport`` (the counts, the shards, the exit code) and
``Progress`` (what the parent tells a person while it runs; the CLI supplies a rich or
plain one, ``avprep.progress``). Their own module, so that the dispatcher and the run
that owns it both use them without importing each other."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from avprep import manifest


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
