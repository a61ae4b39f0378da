"""The messages a shard worker sends its dispatcher, one class each (``dispatch.handle``)."""

from __future__ import annotations

from typing import NamedTuple


class Ready(NamedTuple):
    """Started, its libraries imported: it can take an input."""

    worker: int


class Segment(NamedTuple):
    """Input ``index`` has ``segments`` segments written so far (progress)."""

    worker: int
    index: int
    segments: int


class Done(NamedTuple):
    """Input ``index`` is sharded; its row comes with the shard's commit."""

    worker: int
    index: int


class Row(NamedTuple):
    """Input ``index`` was skipped or failed: its manifest ``row``."""

    worker: int
    index: int
    row: dict


class Commit(NamedTuple):
    """Shard ``shard`` is in place with its manifest part, holding ``video_ids``."""

    worker: int
    shard: str
    video_ids: list[str]


class Fatal(NamedTuple):
    """The output cannot be written (after retries): the run stops."""

    worker: int
    error: str


class Exit(NamedTuple):
    """No more inputs: its last shard is committed and it ends."""

    worker: int
