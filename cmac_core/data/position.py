"""Where the training stream stands, so a killed run resumes on exactly the same samples.

The data order is a pure function of (seed, shard list and counts, world size, loader
workers, epoch): ``shards.StreamPlan`` gives every reader (rank x loader worker) one span
of each epoch's items (a clip of a sample), each item once an epoch; the reader cuts its
clips with a generator seeded per item (``stages.PlannedWindow``), shuffles its span a
block at a time (``stages.BlockShuffle``), and torch's DataLoader takes batches from a
rank's workers in turn (batch i from worker i mod W). ``Augment`` draws from a generator
seeded per batch (seed, epoch, rank, worker, batch index). Damage markers are what the
shards hold, so they move nothing from run to run.

The state is three counts per reader: ``[epoch, clips, batches]``, the span it is in,
the clips of that span's shuffled order passed, and the batches it made. Every batch
carries them for its last clip (``READER``); the trainer keeps the latest per worker,
from the batches it has trained on (the loader's prefetch is never counted). A resumed
reader goes straight to the block of its span holding that position: it reads that
block's tar headers, json and windows again (decoding none of the clips it skips) and
goes on exactly. Nothing before the block is read, so a resume costs at most a block,
however long the run.

A resume with another world size or worker count (the seed and the shards unchanged)
computes, from the old readers' positions, the items each epoch in progress has left
(``StreamPlan.rest``: what no old reader passed), and shares those out over the new
readers in the same way: the rest of the epoch is read exactly once, then the epochs go
on in the new layout. The items left are kept in ``DataState.rest`` (ranges of item ids)
until every reader is past their epoch. Without the shards' counts (``pipe:`` URLs) an
item is a whole shard and the passed clips cannot be named: such a resume starts its
epoch anew, and says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cmac_core.data import shards
from cmac_core.data.shards import StreamPlan

READER = "reader"  # the batch entry that says where its reader stands
VERSION = 2


def shards_digest(urls: list[str], counts: list[int] | None = None) -> str:
    """A short digest of the shard list, in order, and their counts (what the plan splits)."""
    text = "\n".join(urls) + ("" if counts is None else "\n" + ",".join(map(str, counts)))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class DataState:
    """Plain data for a checkpoint: the stream's layout, each reader's counts, and the
    items left of epochs a resume shared out anew.

    ``readers[rank][worker] = [epoch, clips, batches]`` up to the last batch the trainer
    used; ``rest[epoch] = [[start, end), ...]`` item ids (``StreamPlan.pending``)."""

    world_size: int
    workers: int  # loader workers per rank (0: the main process reads: one reader)
    seed: int
    epoch: int  # the epoch this layout's stream began in (seeds its augmentations)
    shards: str  # shards_digest of the shard list and counts
    readers: list[list[list[int]]] = field(default_factory=list)
    rest: dict[int, list[list[int]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": VERSION, "world_size": self.world_size, "workers": self.workers,
                "seed": self.seed, "epoch": self.epoch, "shards": self.shards,
                "readers": self.readers,
                "rest": {str(e): r for e, r in sorted(self.rest.items())}}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> DataState:
        if d.get("version") != VERSION:
            raise ValueError(f"data_state version {d.get('version')}")
        readers = [[[int(x) for x in r] for r in rank] for rank in d["readers"]]
        rest = {int(e): [[int(a), int(b)] for a, b in r] for e, r in d["rest"].items()}
        return cls(int(d["world_size"]), int(d["workers"]), int(d["seed"]), int(d["epoch"]),
                   str(d["shards"]), readers, rest)  # fmt: skip

    def readable(self) -> bool:
        """Whether the counts fit the layout: one ``[epoch, clips, batches]`` of non-negative
        numbers per worker per rank, and item ranges in order."""
        per_rank = max(1, self.workers)
        shaped = len(self.readers) == self.world_size and all(
            len(rank) == per_rank and all(len(r) == 3 and min(r) >= 0 for r in rank)
            for rank in self.readers
        )
        ranges = all(0 <= a <= b for r in self.rest.values() for a, b in r)
        return shaped and ranges and 0 <= self.epoch < 2**31

    def prune(self) -> None:
        """Forget the items left of epochs every reader is past."""
        lowest = min(r[0] for rank in self.readers for r in rank)
        self.rest = {e: r for e, r in self.rest.items() if e >= lowest}

    def differs(self, other: DataState) -> str | None:
        """What of the layout changed (one phrase), or None."""
        names = ("world size", "loader workers", "seed", "shard list")
        mine = (self.world_size, self.workers, self.seed, self.shards)
        theirs = (other.world_size, other.workers, other.seed, other.shards)
        changed = [f"{n} {a} -> {b}" if n != "shard list" else "shard list"
                   for n, a, b in zip(names, mine, theirs, strict=True) if a != b]  # fmt: skip
        return ", ".join(changed) or None


class Position:
    """The trainer's side on one rank: the latest ``[epoch, clips, batches]`` per loader
    worker, from the batches it has used."""

    def __init__(self, n_readers: int, start: list[list[int]] | None = None) -> None:
        self.readers = [list(r) for r in start] if start else [[0, 0, 0] for _ in range(n_readers)]

    def note(self, reader: dict) -> None:
        self.readers[reader["worker"]] = [reader["epoch"], reader["clips"], reader["batches"]]


class RotateReaders:
    """The loader's ``worker_init_fn``: loader worker k reads as reader (k + N) mod W, N the
    batches already trained on (``start``). The DataLoader takes batch i from worker i mod
    W, so a resumed loader's first batch comes from reader N mod W, as it would have."""

    def __init__(self, start: list[list[int]]) -> None:
        self.start = start

    def __call__(self, worker_id: int) -> None:
        shards._READER_OFFSET[0] = next_reader(self.start)


def next_reader(start: list[list[int]] | None) -> int:
    """The reader the next batch is due from: batches trained on, mod readers."""
    return sum(r[2] for r in start) % len(start) if start else 0


@dataclass
class Resume:
    """Where a run's stream starts: the epoch its augmentations are seeded with, this rank's
    readers' ``[epoch, clips, batches]`` (empty: from ``epoch``'s start), the items left of
    epochs shared out anew (``StreamPlan.pending``), and a line to say (or None)."""

    epoch: int
    start: list[list[int]]
    rest: dict[int, list[list[int]]]
    note: str | None = None


def resume_point(saved: dict | None, layout: DataState, plan: StreamPlan, *, rank: int,
                 step: int, per_epoch: int | None) -> Resume:  # fmt: skip
    """Where the stream of a run at ``step`` starts, whose checkpoint held ``saved`` (its
    ``data_state``; None: a fresh run or a checkpoint from before issue 18). ``plan``: the
    run's (its shards and counts). The same layout goes on exactly; another world size or
    worker count shares out the rest of the epochs in progress (``StreamPlan.rest``)."""
    if step == 0:
        return Resume(0, [], {})
    epoch = step // per_epoch if per_epoch else 0
    anew = f"the stream of epoch {epoch} starts anew (its samples may repeat or be missed)"
    if saved is None:
        return Resume(epoch, [], {}, f"the checkpoint holds no data position: {anew}")
    unreadable = Resume(epoch, [], {}, f"the checkpoint's data position is not readable: {anew}")
    try:
        old = DataState.from_dict(saved)
    except (KeyError, TypeError, ValueError, AttributeError):
        return unreadable
    if not old.readable():
        return unreadable
    changed = old.differs(layout)
    if changed is None:
        return Resume(old.epoch, old.readers[rank], old.rest)
    said = f"resumed with another data layout ({changed})"
    if old.seed != layout.seed or old.shards != layout.shards or not plan.known:
        why = "" if plan.known else " (the shards' lengths are not known)"
        return Resume(epoch, [], {}, f"{said}: {anew}{why}")
    at = [(r[0], r[1]) for rank_readers in old.readers for r in rank_readers]
    if max(e for e, _ in at) - min(e for e, _ in at) > 64:  # readers never drift that far
        return unreadable
    try:
        rest = plan.with_pending(old.rest).rest(at)
    except (IndexError, ValueError):  # counts past the items: a damaged position
        return unreadable
    first, last = min(rest), max(rest)
    left = sum(b - a for ranges in rest.values() for a, b in ranges)
    epochs = f"epoch {first} has" if first == last else f"epochs {first}-{last} have"
    per_rank = max(1, layout.workers)
    return Resume(first, [[first, 0, 0] for _ in range(per_rank)], rest,
                  f"{said}: the {left} clips {epochs} left are shared out over the new "
                  f"readers, each read once")  # fmt: skip


class KeyLog:
    """``keys/rank-R.jsonl`` in the run dir: one line per step, ``{"step", "keys", "epochs"}``
    (the sample keys of the rank's batch, in order, and the epoch each clip was read in). A
    resumed run first drops the lines past its checkpoint's step (what a killed run trained
    on after it, and a line cut short)."""

    def __init__(self, run_dir, rank: int, *, step: int) -> None:
        self.path = Path(run_dir) / "keys" / f"rank-{rank:05d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if step > 0 and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    break  # a line cut short by a kill: the last one
        self.path.write_text("".join(kept))
        self.f = open(self.path, "a")  # noqa: SIM115

    def write(self, step: int, keys: list[str], epochs: list[int] | None = None) -> None:
        line = {"step": step, "keys": list(keys), **({"epochs": list(epochs)} if epochs else {})}
        self.f.write(json.dumps(line) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_log(run_dir, rank: int = 0) -> list[dict]:
    """The lines a run recorded for ``rank`` (``optim.record_keys``): ``{"step", "keys",
    "epochs"}`` per step, in order."""
    path = Path(run_dir) / "keys" / f"rank-{rank:05d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_keys(run_dir, rank: int = 0) -> list[list[str]]:
    """The keys of each step a run recorded for ``rank`` (``optim.record_keys``), in order."""
    return [line["keys"] for line in read_log(run_dir, rank)]
