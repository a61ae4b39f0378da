"""Plain-data checkpoints, written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and Python primitives: format name and
version, package version, architecture, the config as a dict, the unwrapped
model state_dict, optimizer and scheduler state, step and epoch.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

import cmac_core

FORMAT = "cmac_core.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
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
) -> Path:
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
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate; raise CheckpointError (one line) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 23": garbage, said below
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, unsafe globals, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:160]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cmac_core checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt.get('format_version')}; "
            f"this cmac_core reads version {FORMAT_VERSION}"
        )
    return ckpt


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
