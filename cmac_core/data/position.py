"""Where the training stream stands, so a killed run resumes on exactly the same samples.

The data order is a pure function of (seed, world size, loader workers, shard list, the
epoch the stream started in): each reader (rank x loader worker) walks its own shards
(``EpochShards``), cuts clips (``ClipWindow``, seeded per reader) and shuffles them
(``Shuffle``, seeded per reader), and torch's DataLoader takes batches from a rank's
workers in turn (batch i from worker i mod W). Damage markers are what the shards hold,
so they move nothing from run to run.

The state is a count per reader, not the stream's insides. Each reader numbers the clips
that leave its shuffle buffer (``Numbered``) and the batches it makes; every batch carries
``{"worker", "clips", "batches"}`` of its last clip (``READER``), and the trainer keeps the
latest per worker, from the batches it has trained on (the loader's prefetch is never
counted). A resumed reader replays its stream's cheap part (tar headers, json, the
window's byte ranges read, ``ClipWindow`` and ``Shuffle`` drawing as before) and drops
the first ``clips`` clips before ``DecodeFrames``: no JPEG is decoded for a skipped clip,
and the buffer holds what it held. ``Augment`` draws from a generator seeded per batch
(seed, epoch, rank, worker, batch index), so it needs no replay.

Why counts and not (shard, offset, buffer contents): the buffer holds decoded windows of
up to ``shuffle_buffer`` samples from several shards, and the generators' states are
numpy/Python objects; a count is a few integers of plain data, and replaying it reads
only what the seek reader reads anyway (headers, json, a clip's bytes; the fast-forward of
a reader ``n`` clips in is about ``n`` header walks, no decoding).

A resume with another world size or worker count cannot replay these streams (another
layout partitions the shards otherwise): it says so in one line and starts the new
layout's stream at the checkpoint's epoch, as runs did before (samples of the epoch in
progress may be seen twice or not at all).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cmac_core.data import shards
from cmac_core.data.shards import worker_coords

READER = "reader"  # the batch entry that says where its reader stands
VERSION = 1


def shards_digest(urls: list[str]) -> str:
    """A short digest of the shard list, in order (what the layout partitions)."""
    return hashlib.blake2b("\n".join(urls).encode(), digest_size=8).hexdigest()


@dataclass
class DataState:
    """Plain data for a checkpoint: the stream's layout and each reader's counts.

    ``readers[rank][worker] = [clips, batches]``: clips out of that reader's shuffle
    buffer and batches it made, up to the last batch the trainer used."""

    world_size: int
    workers: int  # loader workers per rank (0: the main process reads: one reader)
    seed: int
    epoch: int  # the epoch the stream started in (the seed of its order)
    shards: str  # shards_digest of the shard list
    readers: list[list[list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"version": VERSION, "world_size": self.world_size, "workers": self.workers,
                "seed": self.seed, "epoch": self.epoch, "shards": self.shards,
                "readers": self.readers}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> DataState:
        return cls(int(d["world_size"]), int(d["workers"]), int(d["seed"]), int(d["epoch"]),
                   str(d["shards"]), [[list(map(int, r)) for r in rank] for rank in d["readers"]])  # fmt: skip

    def layout(self) -> tuple[int, int, int, str]:
        return (self.world_size, self.workers, self.seed, self.shards)

    def differs(self, other: DataState) -> str | None:
        """What of the layout changed (one phrase), or None."""
        names = ("world size", "loader workers", "seed", "shard list")
        changed = [f"{n} {a} -> {b}" if n != "shard list" else "shard list"
                   for n, a, b in zip(names, self.layout(), other.layout(), strict=True) if a != b]  # fmt: skip
        return ", ".join(changed) or None


class Position:
    """The trainer's side on one rank: the latest ``[clips, batches]`` per loader worker,
    from the batches it has used."""

    def __init__(self, n_readers: int, start: list[list[int]] | None = None) -> None:
        self.readers = [list(r) for r in start] if start else [[0, 0] for _ in range(n_readers)]

    def note(self, reader: dict) -> None:
        self.readers[reader["worker"]] = [reader["clips"], reader["batches"]]


class Numbered:
    """Pipeline stage after ``Shuffle``: numbers the clips leaving the buffer (``"_n"``,
    from 1) and drops the first ``start[worker][0]`` of them (a resume's fast-forward,
    before any JPEG is decoded). Markers pass unnumbered."""

    def __init__(self, start: list[list[int]] | None = None) -> None:
        self.start = start

    def __call__(self, src):
        worker, _ = worker_coords()
        skip = self.start[worker][0] if self.start else 0
        n = 0
        for s in src:
            if "__error__" in s:
                yield s
                continue
            n += 1
            if n <= skip:
                continue
            s["_n"] = n
            yield s


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
    return sum(r[1] for r in start) % len(start) if start else 0


def resume_point(saved: dict | None, layout: DataState, *, rank: int, step: int,
                 per_epoch: int | None) -> tuple[int, list[list[int]], str | None]:  # fmt: skip
    """``(epoch the stream starts in, this rank's readers' [clips, batches], a line to say)``
    for a run at ``step`` whose checkpoint held ``saved`` (its ``data_state``; None: a fresh
    run or a checkpoint from before issue 18). Only the same layout resumes exactly."""
    epoch = step // per_epoch if per_epoch else 0
    if step == 0:
        return 0, [], None
    if saved is None:
        return epoch, [], (f"the checkpoint holds no data position: the stream of epoch "
                           f"{epoch} starts anew (its samples may repeat or be missed)")  # fmt: skip
    unreadable = (f"the checkpoint's data position is not readable: the stream of epoch "
                  f"{epoch} starts anew (its samples may repeat or be missed)")  # fmt: skip
    try:
        old = DataState.from_dict(saved)
    except (KeyError, TypeError, ValueError, AttributeError):
        return epoch, [], unreadable
    changed = old.differs(layout)
    if changed is not None:
        return epoch, [], (f"resumed with another data layout ({changed}): the stream of epoch "
                           f"{epoch} starts anew in the new layout (samples of this epoch may "
                           f"repeat or be missed)")  # fmt: skip
    try:
        mine = [[int(c), int(b)] for c, b in old.readers[rank]]
    except (TypeError, ValueError, IndexError):
        return epoch, [], unreadable
    bad_counts = len(mine) != max(1, layout.workers) or min(min(r) for r in mine) < 0
    if bad_counts or len(old.readers) != layout.world_size or not 0 <= old.epoch < 2**31:
        return epoch, [], unreadable
    return old.epoch, mine, None


class KeyLog:
    """``keys/rank-R.jsonl`` in the run dir: one line per step, ``{"step", "keys"}`` (the
    sample keys of the rank's batch, in order). A resumed run first drops the lines past
    its checkpoint's step (what a killed run trained on after it, and a line cut short)."""

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

    def write(self, step: int, keys: list[str]) -> None:
        self.f.write(json.dumps({"step": step, "keys": list(keys)}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_keys(run_dir, rank: int = 0) -> list[list[str]]:
    """The keys of each step a run recorded for ``rank`` (``optim.record_keys``), in order."""
    path = Path(run_dir) / "keys" / f"rank-{rank:05d}.jsonl"
    return [json.loads(line)["keys"] for line in path.read_text().splitlines()]
