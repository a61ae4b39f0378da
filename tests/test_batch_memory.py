"""Loader workers reuse a batch's shared memory only once the trainer has handed it back."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cmac_core.config import preset
from cmac_core.data import batch_memory
from cmac_core.data.loader import train_stream, with_spec_norm

N = 3 * batch_memory.SLOTS  # batches: more than a worker's buffers


def _stream(shards, resize_on: str):
    data = with_spec_norm(str(shards), preset("tiny").data)
    data = dataclasses.replace(data, resize_on=resize_on)
    return train_stream(str(shards), data, batch_size=2, workers=1, seed=5)


@pytest.mark.parametrize("resize_on", ["loader", "device"])
def test_released_buffers_are_reused_and_held_ones_never_overwritten(demo_shards, resize_on):
    """Run 1 copies each batch's video and releases it: every batch comes in a reused
    buffer (a ticket on each of 3x more batches than buffers). Run 2 holds every batch
    and releases none: each keeps its own memory (the worker allocates anew), so the
    videos held to the end equal run 1's copies, batch for batch."""
    copies, slots = [], []
    for batch in _stream(demo_shards, resize_on).loader:
        copies.append(_pixels(batch))
        ticket = batch.pop(batch_memory.KEY)
        slots.append(None if ticket is None else ticket.slot)
        batch_memory.release(ticket)
        if len(copies) == N:
            break
    assert None not in slots and set(slots) <= set(range(batch_memory.SLOTS)), slots
    held = []
    for batch in _stream(demo_shards, resize_on).loader:
        held.append(batch)
        if len(held) == N:
            break
    tickets = [b[batch_memory.KEY] for b in held]
    assert all(t is not None for t in tickets[: batch_memory.SLOTS - 4])  # the first are pooled
    assert all(t is None for t in tickets[batch_memory.SLOTS :])  # then every buffer is out
    for i, (a, b) in enumerate(zip(copies, held, strict=True)):
        assert all(map(torch.equal, a, _pixels(b))), f"batch {i} changed while it was held"


def _pixels(batch: dict) -> list[torch.Tensor]:
    """Copies of a batch's clips as stored: with the resize left to the device, each crop
    without the padding around it (never read, left as the buffer's last batch had it)."""
    if "crops" not in batch:
        return [v.clone() for v in batch["video"]]
    return [
        v[:, :h, :w].clone()
        for v, (h, w, _) in zip(batch["video"], batch["crops"].tolist(), strict=True)
    ]


def test_outside_a_worker_batches_are_plain_memory():
    t, ticket = batch_memory.batch_tensor((2, 3), torch.float32)
    assert ticket is None and t.shape == (2, 3) and not t.is_shared()
    batch_memory.release(None)  # nothing to hand back
