"""Plain-data checkpoints, written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and Python primitives: format name and
version, package version, architecture, the config as a dict, the unwrapped
model state_dict, optimizer and scheduler state, step and epoch; a pretraining run's also
where its data stream stands (``data_state``, for an exact resume).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

import cmac_core
from cmac_core.errors import CmacError

FORMAT = "cmac_core.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(CmacError):
    """The file is not a usable checkpoint; the message says why, in one line."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save(
    path: str | Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    step: int,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: dict[str, Any] | None = None,
    arch: str = "cmac",
    metrics: dict[str, float] | None = None,
    data_state: dict[str, Any] | None = None,
) -> Path:
    """``data_state``: where the training stream stands (``data.position.DataState``, plain
    data), for an exact resume; absent from checkpoints of other runs."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": cmac_core.__version__,
        "arch": arch,
        "config": config,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler,
        "step": int(step),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        **({"data_state": data_state} if data_state is not None else {}),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # through a file: a full disk's OSError stays in the chain
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no partial file is left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


# CSI (colours), OSC (titles, links) and other escapes, then any other control character
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x08\x0b-\x1f\x7f]"
)
_PICKLED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def first_line(text: str, limit: int = 160) -> str:
    """The first non-empty line of a message from torch or a file, for a one-line error:
    ANSI escapes and control characters removed, at most ``limit`` characters."""
    lines = [x.strip() for x in _ESCAPES.sub("", text).splitlines() if x.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate; raise CheckpointError (one line) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    problem = archive_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path} was not loaded: {problem}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 23": garbage, said below
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = _ESCAPES.sub("", str(e))
        found = _PICKLED_GLOBAL.search(text)
        if found:  # torch's advice (load it unsafely) is not passed on
            raise CheckpointError(
                f"{path} is not a plain-data checkpoint: it holds pickled Python objects "
                f"({found.group(1)[:100]}), and was not loaded because loading it would run "
                "code (pickle)"
            ) from e
        detail = text.split("WeightsUnpickler error:", 1)[-1]
        raise CheckpointError(f"{path} is not a readable checkpoint ({first_line(detail)})") from e
    except Exception as e:  # truncated zip, garbage, I/O errors, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({_why(e)})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cmac_core checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt.get('format_version')}; "
            f"this cmac_core reads version {FORMAT_VERSION}"
        )
    return ckpt


def archive_problem(path: Path) -> str | None:
    """Why ``torch.load`` must not open the zip archive ``path``, or None (not a zip: torch
    says what it is). ``torch.save`` stores its records uncompressed, so records that
    expand to more bytes than the file holds were made to allocate what the file does not
    contain (a few MB that load as gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    size = path.stat().st_size
    if expanded > size:
        return (f"its records expand to {expanded} bytes, more than the file's {size} "
                "(torch.save writes them uncompressed)")  # fmt: skip
    return None


def _why(e: BaseException) -> str:
    return first_line(str(e)) or type(e).__name__


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _name(key: object) -> str:
    """A state-dict entry's name for a message (names come from the file: bounded, escaped)."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def check_state_dict(model: torch.nn.Module, state: Any, path: str | Path) -> None:
    """Raise CheckpointError (one line) unless ``state`` has exactly ``model``'s entries, each
    a tensor of the model's shape. Nothing is copied or allocated: ``model`` may live on the
    meta device, so a checkpoint is checked before a model of its size is built, and a
    resume is checked before ``load_state_dict`` half-fills a model."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: its model weights are {type(state).__name__}, not a state dict"
        )
    expected = unwrap(model).state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {_name(missing[0])})"] if missing else []
        parts += [f"{len(unexpected)} unknown (e.g. {_name(unexpected[0])})"] if unexpected else []
        raise CheckpointError(
            f"{path}: its weights do not match its model's entries: {', '.join(parts)}"
        )
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(
                f"{path}: weight {_name(key)} is {type(got).__name__}, not a tensor"
            )
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path}: weight {_name(key)} has shape {list(got.shape)}, its model's has "
                f"{list(want.shape)}: the weights are not of this config's model"
            )


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers (a meta-device model says it for free)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new model: the GPU's free memory, or for the CPU the smaller of
    the kernel's MemAvailable and what this cgroup (a container, a Slurm job) may still
    take. None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = []
    try:
        with open("/proc/meminfo") as f:
            free += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            free.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    return min(free) if free else None


def clip_bytes(data, clips: int) -> int:
    """Bytes of ``clips`` clips of ``data`` (a ``DataConfig``) as the model reads them: float32
    video ``[clips, 3, clip_frames, crop_px, crop_px]``. The least they take: localize's whole
    frames (short side ``crop_px``) are larger, and so are the activations they make."""
    return clips * 3 * data.clip_frames * data.crop_px**2 * 4


def too_big(model: torch.nn.Module, device: torch.device, *, copies: int = 1, data=None,
            clips: int = 0) -> str | None:  # fmt: skip
    """Why a model the size of ``model`` (build it on the meta device) ``copies`` times
    (training: weights, gradients, AdamW's two moments: 4), with ``clips`` clips of ``data``
    at a time (``clip_bytes``), would not fit in the memory free (``available_bytes``) on
    the CPU, where the model is built and clips are cut, or on ``device``; None if it
    would. Nothing is allocated."""
    weights = copies * model_bytes(model)
    batch = clip_bytes(data, clips) if data is not None and clips else 0
    for where in dict.fromkeys([torch.device("cpu"), device]):
        free = available_bytes(where)
        if free is not None and weights + batch > free:
            n = sum(p.numel() for p in model.parameters())
            extra = " with its gradients and optimizer state" if copies > 1 else ""
            what = f"a model of {n:,} parameters ({weights / 2**30:.1f} GiB{extra})"
            if batch:
                what += (f" and clips of {data.clip_frames} frames at {data.crop_px} px, {clips} "
                         f"at a time ({batch / 2**30:.1f} GiB as float32)")  # fmt: skip
            return f"{what}, more than the {free / 2**30:.1f} GiB of memory free on {where.type}"
    return None


def check_fits(model: torch.nn.Module, path: str | Path, device: torch.device, *, data=None,
               clips: int = 0) -> None:  # fmt: skip
    """Raise CheckpointError (one line) if a model the size of ``model`` (build it on the
    meta device), with ``clips`` clips of its ``data`` config at a time, would not fit in
    the memory free on the CPU or on ``device`` (``too_big``): refused before anything is
    allocated."""
    why = too_big(model, device, data=data, clips=clips)
    if why is not None:
        raise CheckpointError(f"{path}: its config makes {why}; not loaded")
