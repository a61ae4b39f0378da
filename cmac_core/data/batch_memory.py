"""The memory of the batches loader workers send: shared, and reused once the trainer is done.

A batch tensor that a loader worker hands to the trainer lives in shared memory (the
worker allocates it there, as ``default_collate`` does, so sending it copies nothing).
Fresh shared memory costs its page faults: about 0.6 ms per MB on the 2-core VM of
BENCHMARKS.md, 6.5 ms for a batch of 32 clips of 8 frames at 112 px (9.6 MB), a third of
the CPU that decoding their JPEGs takes. So each worker keeps up to ``SLOTS`` buffers and
refills one the trainer has handed back: the batch carries a ``Ticket`` (``KEY``), and
``release`` marks its buffer free once the batch's video has been copied out (to the
device, or into the float tensor a CPU run trains on). A batch never released keeps its
buffer, and the worker allocates a fresh one as before: a consumer that does not release
loses the reuse, never data.

The free marks are one byte per buffer in a small shared tensor that travels inside the
``Ticket``: an object the DataLoader's pin-memory thread leaves as it is (a tensor it
would copy into pinned memory, and the mark would never reach the worker).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import get_worker_info

KEY = "memory"
SLOTS = 8  # buffers a worker reuses: more than the batches it has in flight (prefetch 4)


class Ticket:
    """Which buffer of which worker a batch's video lives in (``release`` frees it)."""

    __slots__ = ("busy", "slot")

    def __init__(self, busy: torch.Tensor, slot: int) -> None:
        self.busy, self.slot = busy, slot


def release(ticket: Ticket | None) -> None:
    """Hands a batch's buffer back to its worker: call when nothing reads the batch's
    video any more (a copy of it is on the device, or in a tensor of its own)."""
    if ticket is not None:
        ticket.busy[ticket.slot] = 0


def shared_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory, as ``default_collate`` allocates one."""
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(math.prod(shape))
    return elem.new(storage).view(shape)


class _Pool:
    """One worker's reusable buffers: flat uint8 tensors in shared memory and their marks."""

    def __init__(self) -> None:
        self.busy = shared_tensor((SLOTS,), torch.uint8).zero_()
        self.buffers: list[torch.Tensor] = []

    def take(self, nbytes: int) -> tuple[torch.Tensor, Ticket | None]:
        for i, buf in enumerate(self.buffers):
            if not self.busy[i] and buf.numel() >= nbytes:
                self.busy[i] = 1
                return buf[:nbytes], Ticket(self.busy, i)
        fresh = shared_tensor((nbytes + nbytes // 4,), torch.uint8)  # room for a larger batch
        free = [i for i, _ in enumerate(self.buffers) if not self.busy[i]]  # too small ones
        if len(self.buffers) < SLOTS or free:
            i = free[0] if free else len(self.buffers)
            self.buffers[i:i + 1] = [fresh]  # fmt: skip
            self.busy[i] = 1
            return fresh[:nbytes], Ticket(self.busy, i)
        return fresh[:nbytes], None  # every buffer is out: an unpooled one, as before


_POOL: _Pool | None = None


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, Ticket | None]:
    """An uninitialised batch tensor and its ``Ticket``: in a loader worker, in shared
    memory, from the worker's reusable buffers where one is free; elsewhere plain memory
    (no ticket)."""
    global _POOL
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype), None
    if _POOL is None:
        _POOL = _Pool()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    flat, ticket = _POOL.take(math.prod(shape) * itemsize)
    return flat.view(dtype).view(shape), ticket
