"""Process-group setup from torchrun's environment, gathering with gradients, and the
ranks' watchdog.

``init`` starts the process group under torchrun (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``): NCCL on GPUs, gloo on CPU, with an
explicit collective timeout. Before the group starts, every rank posts its backend,
device and host to the rendezvous store and a mix (a node whose CUDA failed falling back
to gloo while the others use NCCL) is refused on every rank in one line; each rank then
says in one line which device and backend it uses. ``cmac_core.watchdog`` publishes each
rank's progress to the same store, so a rank that waits past the timeout names the rank
that stopped answering instead of hanging silently.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cmac_core.errors import CmacError

DEFAULT_TIMEOUT_S = 300.0
# embed and localize have no config file: their collective timeout comes from here
TIMEOUT_ENV = "AVPREP_COLLECTIVE_TIMEOUT_S"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "nccl" / "gloo" with a process group, "" without one
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(CmacError):
    """A --device that is not one, or CUDA asked for where there is none."""


class RankTimeout(CmacError):
    """A rank stopped answering (or fell behind) past the collective timeout."""


def wants_cuda(device: str) -> bool:
    """``auto``: CUDA when present; otherwise as named (``cuda``, ``cuda:1``, ``cpu``)."""
    if device == "auto":
        return torch.cuda.is_available()
    if device == "cpu":
        return False
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}",
                          cli=f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")  # fmt: skip
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device}: no CUDA device is available here",
                          cli=f"--device {device}: no CUDA device is available here")  # fmt: skip
    return True


def cuda_index(device: str, *, local_rank: int, world_size: int) -> int:
    """The GPU a process uses: ``cuda:N`` alone is GPU N; under torchrun each rank takes
    ``cuda:LOCAL_RANK`` (``cuda:N`` there is refused: it would put every rank on one GPU)."""
    m = re.fullmatch(r"cuda:(\d+)", device)
    if m is None:
        return local_rank
    if world_size > 1:
        raise DeviceError(
            f"device {device} names one GPU, but under torchrun each rank uses cuda:LOCAL_RANK: "
            "give device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs",
            cli=f"--device {device} names one GPU, but under torchrun each rank uses cuda:LOCAL_RANK: "
            "give --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs",
        )
    index = int(m.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        has = f"this machine has {count} CUDA devices (0-{count - 1})"
        raise DeviceError(f"device {device}: {has}", cli=f"--device {device}: {has}")
    return index


def timeout_s_from_env(default: float = DEFAULT_TIMEOUT_S) -> float:
    """``AVPREP_COLLECTIVE_TIMEOUT_S`` if set (a positive number of seconds), else ``default``."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value < 1e7):
        raise DeviceError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


# The rendezvous store of the current process group and its key prefix (one per init, and
# per torchrun restart: keys of an earlier attempt or an earlier init are never read).
_store = None
_prefix = ""
_generation = 0


def store_and_prefix():
    """``(store, prefix)`` of the running process group (``(None, "")`` without one)."""
    return _store, _prefix


def init(
    device: str = "auto", *, timeout_s: float | None = None, announce: bool = True
) -> DistInfo:
    """Start the process group when run under torchrun (NCCL on GPUs, gloo on CPU) with a
    collective timeout of ``timeout_s`` (default: ``AVPREP_COLLECTIVE_TIMEOUT_S`` or 300 s).
    A single process uses ``cuda:N`` as given. Every rank of a group says its device and
    backend in one line on stderr (``announce``); a mix of backends is refused."""
    global _store, _prefix, _generation
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout_s = timeout_s_from_env() if timeout_s is None else float(timeout_s)
    use_cuda = wants_cuda(device)
    if use_cuda:
        index = cuda_index(device, local_rank=local, world_size=world)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if world <= 1:
        return DistInfo(
            rank=rank, world_size=world, local_rank=local, device=dev, timeout_s=timeout_s
        )
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        store.set_timeout(timeout)
        _generation += 1
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        _store, _prefix = store, f"avprep/{restart}/{_generation}/"
        mine = {"backend": backend, "device": str(dev), "host": socket.gethostname()}
        ranks = exchange(store, _prefix + "device", rank, world, mine, timeout_s=timeout_s)
        check_same_backend(ranks)
        # The backend's own timeout a little after the watchdog's, which names the rank
        # that stopped answering (Watchdog); NCCL's and gloo's messages do not.
        pg_timeout = timedelta(seconds=timeout_s + max(2.0, min(30.0, timeout_s)))
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,
                                world_size=world, timeout=pg_timeout)  # fmt: skip
        if announce:
            print(f"avprep: rank {rank}/{world} on {mine['host']}: device {dev}, backend {backend}, "
                  f"collective timeout {timeout_s:g} s", file=sys.stderr, flush=True)  # fmt: skip
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev,
                    backend=dist.get_backend(), timeout_s=timeout_s)  # fmt: skip


def exchange(store, key: str, rank: int, world: int, mine: dict, *, timeout_s: float) -> list[dict]:
    """Every rank's ``mine`` (JSON), in rank order, through the store: no collective."""
    store.set(f"{key}/{rank}", json.dumps(mine))
    keys = [f"{key}/{r}" for r in range(world)]
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001  (the store's timeout: RuntimeError or DistStoreError)
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        raise RankTimeout(
            f"ranks {_ranges(missing)} did not start within {timeout_s:g} s (the collective "
            f"timeout): check their logs; rank {rank} stopped"
        ) from e
    return [json.loads(store.get(k)) for k in keys]


def check_same_backend(ranks: list[dict]) -> None:
    """DeviceError (one line, the same on every rank) unless every rank uses one backend."""
    kinds: dict[str, list[int]] = {}
    for r, info in enumerate(ranks):
        kinds.setdefault(info["backend"], []).append(r)
    if len(kinds) > 1:
        parts = []
        for backend, rs in kinds.items():
            hosts = sorted({ranks[r]["host"] for r in rs})
            parts.append(f"ranks {_ranges(rs)} use {backend} ({ranks[rs[0]]['device'].split(':')[0]}; "
                         f"host {', '.join(hosts[:3])}{', ...' if len(hosts) > 3 else ''})")  # fmt: skip
        why = (f"the ranks do not agree on a backend: {'; '.join(parts)}. A rank without a working "
               "GPU falls back to gloo: fix CUDA there, or give every rank the same device")  # fmt: skip
        raise DeviceError(why, cli=why.replace("the same device", "the same --device"))


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)


def shutdown() -> None:
    global _store
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _store = None


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated on dim 0, with gradients flowing back to each rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # noqa: PLC0415

    return torch.cat(dist_fn.all_gather(x), dim=0)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def all_reduce_sum(value: int, device: torch.device) -> int:
    """The sum over ranks (``value`` alone outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a process group): what one
    rank read (a manifest, a sample's preset) is shared instead of read by every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
