"""The pretraining loop: DDP, bf16 autocast on GPU, checkpoints, resume. Nothing else.

``pretrain(shards, run_dir, cfg)`` runs alone or under torchrun (one process
per GPU; gloo on CPU). Every rank takes exactly ``steps_per_epoch`` batches
per epoch from an endless stream, so no rank waits for another at an epoch's
end. Rank 0 writes ``config.json``, ``metrics.jsonl`` (and TensorBoard event files
where tensorboard is installed) and checkpoints (``step-N.pt``, ``last.pt``); every
rank writes ``ranks/rank-R.json`` at the end.
Nothing is written before every check has passed (a resume must keep the run's
model, data and loss settings), and a run dir this run made is removed again
when the run fails before its first step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from avprep.outdir import try_lock
from cmac_core import checkpoint, distributed
from cmac_core.config import PretrainConfig
from cmac_core.data.augment import finish_video
from cmac_core.data.damage import Damage
from cmac_core.data.loader import train_stream, with_spec_norm
from cmac_core.errors import CmacError
from cmac_core.metrics import Display, MetricsLog
from cmac_core.models import ARCH_OF_METHOD, build
from cmac_core.schedule import WarmupCosine
from cmac_core.sync_task import make_task


class TrainingError(CmacError):
    """The run cannot go on (non-finite loss, bad run dir); one-line message."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs_done: float
    last_checkpoint: Path | None
    final_loss: float | None
    samples_per_s: float
    data_wait_frac: float
    damage: Damage = field(default_factory=Damage)  # damaged shards and samples skipped (all ranks)


def _lock_run_dir(run_dir: Path, rank: int) -> tuple[int, bool]:
    """Make ``run_dir`` if missing and lock it for this rank, as shard and embed lock
    theirs: ``(lock fd, whether this call made the folder)``. A second run into the
    same folder is refused in one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir} is a file, not a run folder: use another --out")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = try_lock(run_dir / f".lock-{rank:05d}")
    except OSError as e:
        raise TrainingError(f"cannot write to {run_dir}: {e.strerror or e}") from e
    if fd is None:
        raise TrainingError(
            f"{run_dir} is in use: another pretrain run (rank {rank}) is training into it; "
            "wait for it, or use another --out"
        )
    return fd, created


def _resume_from(
    run_dir: Path, cfg: PretrainConfig, *, resume: bool, device: torch.device
) -> dict | None:
    """The checkpoint to go on from (None: a fresh run); reads, never writes."""
    last = run_dir / "last.pt"
    if not last.exists():
        return None
    if not resume:
        raise TrainingError(
            f"{run_dir} already holds a run (last.pt): add --resume, or use another --out"
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


def _prepare_run_dir(run_dir: Path, cfg: PretrainConfig, *, is_main: bool) -> None:
    """Write config.json and ranks/."""
    if is_main:
        (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if dist.is_initialized():
        dist.barrier()


def pretrain(
    shards: str | list[str],
    run_dir: str | Path,
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    complete_ok: bool = False,
    device: str = "auto",
    show_progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` on ``shards`` into ``run_dir``; ``resume`` goes on from its last.pt.

    Resuming a run already at its last step raises TrainingError, or with
    ``complete_ok`` returns that run's result (``final_loss`` None) and writes nothing.
    """
    info = distributed.init(device)
    run_dir = Path(run_dir)
    lock = None
    try:
        lock, created = _lock_run_dir(run_dir, info.rank)
        try:
            return _pretrain(shards, run_dir, cfg, info, resume=resume, complete_ok=complete_ok,
                             show_progress=show_progress)  # fmt: skip
        except BaseException:
            if created and info.is_main and not (run_dir / "last.pt").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no run dir
            raise
    finally:
        if lock is not None:
            os.close(lock)
        distributed.shutdown()


def _pretrain(
    shards,
    run_dir: Path,
    cfg: PretrainConfig,
    info,
    *,
    resume: bool,
    complete_ok: bool,
    show_progress: bool,
) -> TrainResult:
    o = cfg.optim
    cfg = dataclasses.replace(cfg, data=with_spec_norm(shards, cfg.data))  # numbers recorded
    ckpt = _resume_from(run_dir, cfg, resume=resume, device=info.device)
    step = ckpt["step"] if ckpt else 0
    torch.manual_seed(o.seed + info.rank)
    cuda = info.device.type == "cuda"
    stream = train_stream(shards, cfg.data, batch_size=o.batch_size, workers=o.workers, rank=info.rank,
                          world_size=info.world_size, seed=o.seed, pin_memory=cuda)  # fmt: skip
    per_epoch = stream.steps_per_epoch
    if per_epoch == 0:
        raise TrainingError(
            f"{stream.n_samples} samples cannot fill one batch of {o.batch_size} on each of "
            f"{info.world_size} ranks: lower --batch-size"
        )
    if o.steps == 0 and per_epoch is None:
        raise TrainingError("remote shards: the epoch length is unknown, give --steps")
    total = o.steps or o.epochs * per_epoch
    if step >= total:
        if not complete_ok:
            raise TrainingError(
                f"{run_dir} is already at step {step} (this run stops at step {total}): "
                "give more --steps to continue"
            )
        return TrainResult(run_dir, step, step / per_epoch if per_epoch else 0.0,
                           run_dir / "last.pt", None, 0.0, 0.0)  # fmt: skip
    schedule = WarmupCosine(o.lr, min(o.warmup_steps, max(1, total // 10)), total)

    arch = ARCH_OF_METHOD[cfg.loss.method]
    model = build(arch, cfg.model).to(info.device)
    if o.channels_last and cuda:
        model = model.to(memory_format=torch.channels_last_3d)
    task = make_task(model, cfg.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    if ckpt:
        _restore(model, optimizer, ckpt, run_dir / "last.pt")
        del ckpt
    runner: torch.nn.Module = task
    if info.distributed:
        runner = DDP(task, device_ids=[info.local_rank] if cuda else None,
                     find_unused_parameters=cfg.loss.method == "avid")  # fmt: skip
    if o.compile:
        runner = torch.compile(runner)

    _prepare_run_dir(run_dir, cfg, is_main=info.is_main)
    metrics = MetricsLog(run_dir, start_step=step) if info.is_main else None
    last_ckpt = run_dir / "last.pt" if step > 0 else None
    display = Display(total, enabled=show_progress and info.is_main)
    wait_s = busy_s = 0.0
    samples = 0
    final_loss = None
    t_log, n_log, wait_log = time.perf_counter(), 0, 0.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    runner.train()
    damage = Damage()
    for line in stream.damage.lines():
        display.print(f"pretrain: {line}; left out")
    try:
        stream.epoch.set(step // per_epoch if per_epoch else step)  # a resumed run reshuffles anew
        batches = iter(stream.loader)  # endless: one iterator for the whole run
        while step < total:
            t0 = time.perf_counter()
            batch = next(batches)
            _note_damage(damage, batch.pop("damage"), display)
            video_u8 = batch["video"].to(info.device, non_blocking=True)
            jitter = batch["jitter"].to(info.device, non_blocking=True)
            spec = batch["spec"].to(info.device, non_blocking=True)
            video_ids = batch["video_id"].to(info.device, non_blocking=True)
            extra = {}  # lla: the synchronization negatives
            if "spec_shifted" in batch:
                extra["spec_shifted"] = batch["spec_shifted"].to(info.device, non_blocking=True)
            t1 = time.perf_counter()
            video = finish_video(video_u8, jitter)  # colour jitter + normalisation on the device
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                out = runner(video, spec, step, video_ids, **extra)  # same-video: no negatives
            loss = out["loss"]
            _check_finite(loss, step, last_ckpt, info.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            step += 1
            t2 = time.perf_counter()
            wait_s, busy_s = wait_s + (t1 - t0), busy_s + (t2 - t0)
            wait_log += t1 - t0
            samples += video.shape[0]
            n_log += video.shape[0]
            final_loss = float(loss.detach())  # (the finiteness check already synchronised)
            if step % o.log_every_steps == 0 or step == total:
                now = time.perf_counter()
                record = {"step": step, "epoch": step / per_epoch if per_epoch else None, "lr": lr}
                record.update(
                    {
                        k: distributed.all_reduce_mean(float(v.detach()), info.device)
                        for k, v in out.items()
                    }
                )
                record["attention_weight"] = task.attention_weight(step - 1)
                record["samples_per_s"] = n_log * info.world_size / max(now - t_log, 1e-9)
                record["data_wait_frac"] = wait_log / max(now - t_log, 1e-9)
                t_log, n_log, wait_log = now, 0, 0.0
                if metrics is not None:
                    metrics.write(record)
                display.update(record)
            if step % o.save_every_steps == 0 or step == total:
                last_ckpt = _save(
                    run_dir, model, optimizer, cfg, schedule, step, per_epoch, info.is_main, arch
                )
    finally:
        display.stop()
        if metrics is not None:
            metrics.close()
    (run_dir / "ranks" / f"rank-{info.rank:05d}.json").write_text(
        json.dumps(
            {"rank": info.rank, "world_size": info.world_size, "step": step, "samples": samples}
        )
    )
    damage.update(stream.damage)
    total = Damage()
    for rank_damage in distributed.gather_objects(damage):
        total.update(rank_damage)
    return TrainResult(run_dir, step, step / per_epoch if per_epoch else 0.0, last_ckpt, final_loss,
                       samples * info.world_size / max(busy_s, 1e-9), wait_s / max(busy_s, 1e-9),
                       total)  # fmt: skip


def _note_damage(damage: Damage, markers: list[dict], display: Display) -> None:
    """Tally the damage a batch's samples passed over; say so the first time for a shard."""
    for m in markers:
        new = m["__url__"] not in damage.samples and m["__url__"] not in damage.cut_short
        damage.note(m)
        if new:
            what = "damaged samples skipped" if m["__kind__"] == "sample" else "read stopped"
            display.print(f"pretrain: shard {m['__url__']}: {what} ({m['__error__']})")


def _restore(model: torch.nn.Module, optimizer, ckpt: dict, path: Path) -> None:
    """The checkpoint's weights and optimizer state into the run's; one line if they do not fit."""
    checkpoint.check_state_dict(model, ckpt.get("model"), path)  # names, shapes: before copying
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise TrainingError(f"{path}: its weights do not fit the run's model ({first})") from e


def _check_finite(
    loss: torch.Tensor, step: int, last_ckpt: Path | None, device: torch.device
) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(bad)
    if bad.item() > 0:
        kept = (
            f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        )
        raise TrainingError(f"loss is not finite at step {step} (nan/inf); stopped. {kept}")


def _save(run_dir, model, optimizer, cfg, schedule, step, per_epoch, is_main, arch="cmac") -> Path:
    path = run_dir / "last.pt"
    if is_main:
        epoch = step // per_epoch if per_epoch else 0
        tmp = run_dir / f".last.{os.getpid()}.tmp"
        try:
            checkpoint.save(run_dir / f"step-{step}.pt", model=model, optimizer=optimizer, config=cfg.to_dict(),
                            step=step, epoch=epoch, scheduler=schedule.state_dict(), arch=arch)  # fmt: skip
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
