"""A pretraining run's folder: its lock, the checkpoint a run goes on from, config.json,
and writing and restoring checkpoints.

One run trains into a folder at a time (a lock per rank, as shard and embed lock theirs);
a resume must keep the run's model, data and loss settings; ``step-N.pt`` is written
first and ``last.pt`` replaced by a link to it, so a kill leaves the last good one; non-finite
weights are never saved.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from avprep.outdir import try_lock
from cmac_core import checkpoint
from cmac_core.config import PretrainConfig
from cmac_core.errors import CmacError
from cmac_core.step_guard import StepGuard, to_host, weights_finite


class TrainingError(CmacError):
    """The run cannot go on (non-finite loss, bad run dir); one-line message."""


def lock_run_dir(run_dir: Path, rank: int) -> tuple[int, bool]:
    """Make ``run_dir`` if missing and lock it for this rank, as shard and embed lock
    theirs: ``(lock fd, whether this call made the folder)``. A second run into the
    same folder is refused in one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir} is a file, not a run folder: use another run_dir",
                            cli=f"{run_dir} is a file, not a run folder: use another --out")  # fmt: skip
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = try_lock(run_dir / f".lock-{rank:05d}")
    except OSError as e:
        raise TrainingError(f"cannot write to {run_dir}: {e.strerror or e}") from e
    if fd is None:
        busy = f"{run_dir} is in use: another pretrain run (rank {rank}) is training into it; wait for it"
        raise TrainingError(f"{busy}, or use another run_dir", cli=f"{busy}, or use another --out")
    return fd, created


def resume_from(
    run_dir: Path, cfg: PretrainConfig, *, resume: bool, device: torch.device
) -> dict | None:
    """The checkpoint to go on from (None: a fresh run); reads, never writes."""
    last = run_dir / "last.pt"
    if not last.exists():
        return None
    if not resume:
        raise TrainingError(
            f"{run_dir} already holds a run (last.pt): resume it (resume=True), or use another run_dir",
            cli=f"{run_dir} already holds a run (last.pt): add --resume, or use another --out",
        )
    ckpt = checkpoint.load(last, map_location=device)
    saved, new = PretrainConfig.from_dict(ckpt["config"]).to_dict(), cfg.to_dict()
    differ = [
        f"{section} ({', '.join(k for k in new[section] if new[section][k] != saved[section][k])})"
        for section in ("model", "data", "loss")
        if new[section] != saved[section]
    ]
    if differ:
        raise TrainingError(
            f"{run_dir} was trained with other settings: {'; '.join(differ)}. Resume with the "
            f"run's config ({run_dir / 'config.json'}); only optim settings (such as "
            "optim.steps or optim.lr) may change"
        )
    return ckpt


def prepare_run_dir(run_dir: Path, cfg: PretrainConfig, *, is_main: bool) -> None:
    """Write config.json and ranks/."""
    if is_main:
        (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if dist.is_initialized():
        dist.barrier()


def kept_line(last_ckpt: Path | None) -> str:
    return f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"


def restore(model: torch.nn.Module, optimizer, ckpt: dict, path: Path) -> None:
    """The checkpoint's weights and optimizer state into the run's; one line if they do not fit."""
    checkpoint.check_state_dict(model, ckpt.get("model"), path)  # names, shapes: before copying
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise TrainingError(f"{path}: its weights do not fit the run's model ({first})") from e


def save(run_dir, model, optimizer, cfg, schedule, step, per_epoch, is_main, arch="cmac", *,
         guard: StepGuard | None = None, last_ckpt: Path | None = None,
         data_state: dict | None = None) -> Path:  # fmt: skip
    """Write step-N.pt and last.pt (rank 0). Every rank first checks, in one transfer, that
    the weights are finite and the guard saw no run of non-finite steps: non-finite weights
    are never saved (the same answer on every rank, whose weights are equal)."""
    checks = [weights_finite(model).long().reshape(1)]
    if guard is not None:
        checks.append(guard.values())
    host = to_host(torch.cat(checks))
    problem = guard.problem(host[1:], current=not host[0]) if guard is not None else None
    if problem is not None and (not host[0] or guard.problem(host[1:]) is not None):
        raise TrainingError(f"{problem}; stopped. {kept_line(last_ckpt)}"
                            + ("; the weights are not finite, not saved" if not host[0] else ""))  # fmt: skip
    if not host[0]:
        raise TrainingError(f"the weights are not finite at step {step}: not saved; stopped. "
                            f"{kept_line(last_ckpt)}")  # fmt: skip
    path = run_dir / "last.pt"
    if is_main:
        epoch = step // per_epoch if per_epoch else 0
        tmp = run_dir / f".last.{os.getpid()}.tmp"
        try:
            checkpoint.save(run_dir / f"step-{step}.pt", model=model, optimizer=optimizer, config=cfg.to_dict(),
                            step=step, epoch=epoch, scheduler=schedule.state_dict(), arch=arch,
                            data_state=data_state)  # fmt: skip
            try:
                os.link(run_dir / f"step-{step}.pt", tmp)
            except OSError:  # file systems without hard links
                shutil.copyfile(run_dir / f"step-{step}.pt", tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # torch.save's "unexpected pos" on a full disk
            for partial in (tmp, *run_dir.glob(f".step-{step}.pt.*.tmp")):
                partial.unlink(missing_ok=True)
            kept = f"last good checkpoint: {path}" if path.exists() else "no checkpoint was written"
            raise TrainingError(
                f"cannot write the step {step} checkpoint in {run_dir} ({_why(e)}); {kept}"
            ) from e
    if dist.is_initialized():
        dist.barrier()
    return path


def _why(e: BaseException) -> str:
    """The system's words for a failed write: the OSError's, where torch wrapped one."""
    cause = next((x for x in (e, e.__cause__, e.__context__) if isinstance(x, OSError)), None)
    if cause is not None and cause.strerror:
        return cause.strerror
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
