"""Counting host-device synchronisations on any device, CPU included.

``torch.cuda.set_sync_debug_mode`` only sees CUDA. ``SyncCounter`` is a torch function
mode that sees every call a Python program makes into torch, and counts the ones that
make the host wait for the device when the tensors live on a GPU:

- reading values on the host: ``item``, ``bool()``, ``float()``, ``int()``, ``tolist``,
  ``numpy``, ``cpu``;
- operations whose output size depends on values: ``nonzero``, ``masked_select``,
  ``unique``, ``repeat_interleave`` without ``output_size``, one-argument ``where``,
  ``argwhere``, indexing (read or write) with a boolean tensor;
- blocking copies to the device: ``torch.tensor`` / ``as_tensor`` given a ``device``, and
  ``.to()`` / ``.cuda()`` without ``non_blocking=True`` of a tensor the counted code did not
  produce itself (a constant made outside it, from pageable host memory).

It is conservative where a CPU run cannot tell host from device (a value read from a
tensor that would stay on the host is counted too) and blind to what happens below
Python (inside a C++ kernel or the autograd engine), which ``torch.cuda`` reports on a
GPU (``cmac_core.gpu_check`` shows both there). Counts are deterministic: they depend
on the code path, not on timing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}
_DYNAMIC = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere"}


def _name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.rsplit(".", 1)[-1]


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)


def _has_bool_index(index) -> bool:
    return any(
        t.dtype == torch.bool for t in _tensors(index if isinstance(index, tuple) else (index,))
    )


class SyncCounter(TorchFunctionMode):
    """``with SyncCounter() as c:`` ... ``c.total``, ``c.calls`` (a Counter by name), and
    ``c.where`` (the first few calls' stacks, for a failing test's message)."""

    def __init__(self, *, keep_stacks: int = 5) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.where: list[str] = []
        self.keep = keep_stacks
        self._made = WeakIdKeyDictionary()  # tensors produced inside: already on the device

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def _note(self, what: str) -> None:
        self.calls[what] += 1
        if len(self.where) < self.keep:
            import traceback  # noqa: PLC0415

            frames = [f for f in traceback.extract_stack()[:-3] if "/torch/" not in f.filename]
            self.where.append(f"{what} at " + " <- ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames[-4:])))  # fmt: skip

    def _classify(self, name: str, args, kwargs) -> str | None:
        if name in _READS:
            return name
        if name in _DYNAMIC:
            return name
        if (
            name == "repeat_interleave"
            and kwargs.get("output_size") is None
            and (
                len(args) > 1
                and isinstance(args[1], torch.Tensor)
                or isinstance(kwargs.get("repeats"), torch.Tensor)
            )
        ):
            return name
        if name == "where" and len(args) + len(kwargs) == 1:
            return "where(cond)"
        if name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1 \
                and _has_bool_index(args[1]):  # fmt: skip
            return f"{name}[bool mask]"
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            return f"torch.{name}(device=...)"
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor):
            moves = (
                name == "cuda"
                or kwargs.get("device") is not None
                or any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])
            )
            blocking = not kwargs.get("non_blocking", False) and not (
                len(args) > 2 and isinstance(args[-1], bool) and args[-1]
            )
            if moves and blocking and args[0] not in self._made:
                return f"{name}() of a host tensor"
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = self._classify(_name(func), args, kwargs)
        if what is not None:
            self._note(what)
        out = func(*args, **kwargs)
        for t in _tensors(out):
            self._made[t] = True
        return out


class StepSyncs:
    """An ``observer`` for ``cmac_core.train.pretrain``: one ``SyncCounter`` per step;
    ``per_step`` maps each step index (0-based) to its count and ``calls`` to its Counter.
    With ``cuda``, ``cuda_per_step`` also holds what CUDA's sync debug mode reported
    (``torch.cuda.set_sync_debug_mode``: syncs below Python too)."""

    def __init__(self, *, cuda: bool = False) -> None:
        self.cuda = cuda
        self.per_step: dict[int, int] = {}
        self.cuda_per_step: dict[int, int] = {}
        self.calls: dict[int, Counter] = {}
        self.where: dict[int, list[str]] = {}

    @contextlib.contextmanager
    def __call__(self, step: int):
        with contextlib.ExitStack() as stack:
            seen = None
            if self.cuda:
                seen = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                stack.callback(torch.cuda.set_sync_debug_mode, 0)
            c = stack.enter_context(SyncCounter())
            yield
        self.per_step[step] = c.total
        self.calls[step] = c.calls
        self.where[step] = c.where
        if seen is not None:
            self.cuda_per_step[step] = sum("synchroniz" in str(w.message) for w in seen)
