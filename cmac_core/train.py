"""The pretraining loop: DDP, bf16 autocast on GPU, checkpoints, resume. Nothing else.

``pretrain(shards, run_dir, cfg)`` runs alone or under torchrun (one process
per GPU; gloo on CPU). Every rank takes one batch a step from an endless stream of
epochs (``data.shards.StreamPlan``: each reader's span of each epoch, each clip once an
epoch), so no rank waits for another at an epoch's end; ``steps_per_epoch`` is the
epoch's clips over the global batch. Rank 0 lists, checks and counts the shards for all,
and writes ``config.json``, ``metrics.jsonl`` (and TensorBoard event files where
tensorboard is installed) and checkpoints (``step-N.pt``, ``last.pt``); every rank writes
``ranks/rank-R.json`` at the end.
Nothing is written before every check has passed (a resume must keep the run's
model, data and loss settings), and a run dir this run made is removed again
when the run fails before its first step.

A plain step makes no host-device sync (docs/cluster.md): a step whose loss or gradient
norm is not finite is skipped on the device (``step_guard``), values reach the host only
on log steps and before saves (``to_host``), and non-finite weights are never saved.
Under torchrun each rank's ``Watchdog`` names a rank that stops answering.
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

from cmac_core import checkpoint, distributed, run_folder
from cmac_core.config import ConfigError, PretrainConfig
from cmac_core.data import batch_memory, position
from cmac_core.data.augment import batch_video
from cmac_core.data.damage import Damage
from cmac_core.data.loader import Counted, count_shards, train_stream, with_spec_norm
from cmac_core.errors import CmacError
from cmac_core.metrics import Display, MetricsLog
from cmac_core.models import ARCH_OF_METHOD, build
from cmac_core.models.placement import sync_batchnorm, use_channels_last
from cmac_core.run_folder import TrainingError
from cmac_core.schedule import WarmupCosine
from cmac_core.step_guard import StepGuard, grad_norm, to_host
from cmac_core.sync_task import make_task
from cmac_core.watchdog import Watchdog


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
    skipped_steps: int = 0  # updates skipped: loss or gradient norm not finite


def pretrain(
    shards: str | list[str],
    run_dir: str | Path,
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    complete_ok: bool = False,
    device: str = "auto",
    show_progress: bool = True,
    observer=None,
) -> TrainResult:
    """Train ``cfg`` on ``shards`` into ``run_dir``; ``resume`` goes on from its last.pt.

    Resuming a run already at its last step raises TrainingError, or with
    ``complete_ok`` returns that run's result (``final_loss`` None) and writes nothing.
    ``observer``: called as ``observer(step)`` for a context manager around each step's work
    after its batch arrives (the sync counter of ``cmac_core.gpu_check`` and the tests).
    """
    info = distributed.init(device, timeout_s=cfg.optim.collective_timeout_s)
    run_dir = Path(run_dir)
    lock = None
    dog = Watchdog.start_for(info, what="step")
    try:
        lock, created = run_folder.lock_run_dir(run_dir, info.rank)
        try:
            result = _pretrain(shards, run_dir, cfg, info, resume=resume, complete_ok=complete_ok,
                               show_progress=show_progress, observer=observer, dog=dog)  # fmt: skip
        except BaseException:
            if created and info.is_main and not (run_dir / "last.pt").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no run dir
            raise
        if dog is not None:
            dog.finish()
        return result
    except dist.DistError as e:  # a collective that failed (a peer gone): one line
        raise TrainingError(
            f"rank {info.rank}: a collective failed ({checkpoint.first_line(str(e), 200)}); "
            "another rank stopped: see its log"
        ) from e
    finally:
        if dog is not None:
            dog.stop()
        if lock is not None:
            os.close(lock)
        distributed.shutdown()


def configure_backends(device: torch.device, optim) -> None:
    """cuDNN's benchmark mode on CUDA (``optim.cudnn_benchmark``): every step has one shape,
    so the fastest kernels are chosen once."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(optim.cudnn_benchmark)


def build_model(cfg: PretrainConfig, info: distributed.DistInfo) -> tuple[torch.nn.Module, str]:
    """``(model on the run's device, its arch)``: with more than one rank and
    ``optim.sync_batchnorm``, cmac and avid normalise over the global batch; with
    ``optim.channels_last`` each encoder takes its own channels-last format."""
    arch = ARCH_OF_METHOD[cfg.loss.method]
    model = build(arch, cfg.model)
    if info.distributed and cfg.optim.sync_batchnorm and cfg.loss.method != "lla":
        model = sync_batchnorm(model, info.device)
    model = model.to(info.device)
    if cfg.optim.channels_last:
        use_channels_last(model)
    return model, arch


def check_fits(cfg: PretrainConfig, info: distributed.DistInfo) -> None:
    """ConfigError (one line) if ``cfg``'s model, with its gradients and AdamW's two moments,
    and a batch of its clips would not fit in the memory free on the CPU or the run's
    device (``checkpoint.too_big``): built on the meta device, nothing allocated."""
    with torch.device("meta"):
        shape_only = build(ARCH_OF_METHOD[cfg.loss.method], cfg.model)
    why = checkpoint.too_big(shape_only, info.device, copies=4, data=cfg.data,
                             clips=cfg.optim.batch_size)  # fmt: skip
    if why is not None:
        fix = "lower the model's widths or blocks, data.clip_frames, data.crop_px or "
        raise ConfigError(f"the config makes {why}: {fix}optim.batch_size",
                          cli=f"the config makes {why}: {fix}--batch-size")  # fmt: skip


def make_optimizer(model: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """AdamW, fused: its update reads ``found_inf`` on the device and skips itself there, so
    a step with a non-finite gradient is skipped without the host waiting for the device."""
    return torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay,
                             fused=True)  # fmt: skip


def _rank0_data_config(shards, cfg: PretrainConfig, info) -> PretrainConfig:
    """``cfg`` with its log-mel normalisation fixed from the shards (``with_spec_norm``),
    read by rank 0 alone and shared: every rank reading a sample of the shards at start
    is a burst on a parallel file system. A refusal there is every rank's."""
    result, error = None, None
    if info.is_main:
        try:
            result = with_spec_norm(shards, cfg.data)
        except ConfigError as e:
            if not info.distributed:
                raise
            error = str(e)
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        raise ConfigError(error)
    return dataclasses.replace(cfg, data=result)


def resize_where(data, device: torch.device):
    """``data`` with ``resize_on`` "auto" settled for ``device``: on CUDA the crops are
    resized there, elsewhere in the loader workers. The run's config keeps "auto"."""
    if data.resize_on != "auto":
        return data
    return dataclasses.replace(data, resize_on="device" if device.type == "cuda" else "loader")


def _rank0_counted(shards, info) -> Counted:
    """The shards listed, checked and counted (manifests read) by rank 0 alone and shared
    (``loader.count_shards``): with N ranks the storage sees one reader, not N. A refusal
    there (no shards, a bad spec) is every rank's."""
    result, error = None, None
    if info.is_main:
        try:
            result = count_shards(shards)
        except CmacError as e:
            if not info.distributed:
                raise
            error = (type(e), str(e), getattr(e, "cli", None))
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        kind, text, cli = error
        raise kind(text, cli=cli)
    return result


def _pretrain(
    shards,
    run_dir: Path,
    cfg: PretrainConfig,
    info,
    *,
    resume: bool,
    complete_ok: bool,
    show_progress: bool,
    observer=None,
    dog=None,
) -> TrainResult:
    o = cfg.optim
    check_fits(cfg, info)  # before the shards are read and the loader's workers start
    cfg = _rank0_data_config(shards, cfg, info)  # numbers recorded
    ckpt = run_folder.resume_from(run_dir, cfg, resume=resume, device=info.device)
    step = ckpt["step"] if ckpt else 0
    saved_data = ckpt.get("data_state") if ckpt else None
    torch.manual_seed(o.seed + info.rank)
    cuda = info.device.type == "cuda"
    configure_backends(info.device, o)
    data = resize_where(cfg.data, info.device)  # the stream's; the run's config keeps "auto"
    stream = train_stream(shards, data, batch_size=o.batch_size, workers=o.workers, rank=info.rank,
                          world_size=info.world_size, seed=o.seed, pin_memory=cuda,
                          counted=_rank0_counted(shards, info))  # fmt: skip
    per_epoch = stream.steps_per_epoch
    if per_epoch == 0:
        short = (f"{stream.n_samples} samples cannot fill one batch of {o.batch_size} on each of "
                 f"{info.world_size} ranks")  # fmt: skip
        raise TrainingError(f"{short}: lower optim.batch_size", cli=f"{short}: lower --batch-size")
    if o.steps == 0 and per_epoch is None:
        raise TrainingError("remote shards: the epoch length is unknown, set optim.steps",
                            cli="remote shards: the epoch length is unknown, give --steps")  # fmt: skip
    total = o.steps or o.epochs * per_epoch
    if step >= total:
        if not complete_ok:
            at = f"{run_dir} is already at step {step} (this run stops at step {total})"
            raise TrainingError(f"{at}: set more optim.steps to continue",
                                cli=f"{at}: give more --steps to continue")  # fmt: skip
        return TrainResult(run_dir, step, step / per_epoch if per_epoch else 0.0,
                           run_dir / "last.pt", None, 0.0, 0.0)  # fmt: skip
    schedule = WarmupCosine(o.lr, min(o.warmup_steps, max(1, total // 10)), total)
    layout = position.DataState(info.world_size, o.workers, o.seed, 0,
                                position.shards_digest(stream.urls, stream.plan.counts))  # fmt: skip
    resumed = position.resume_point(saved_data, layout, stream.plan, rank=info.rank, step=step,
                                    per_epoch=per_epoch)  # fmt: skip
    layout.epoch, layout.rest, note = resumed.epoch, resumed.rest, resumed.note
    stream.start[:] = resumed.start  # each reader goes straight to its block, decoding nothing
    stream.plan.pending.update(resumed.rest)  # the epochs a changed layout shares out anew
    at = position.Position(max(1, o.workers), resumed.start or None)
    if not resumed.start:
        at.readers = [[layout.epoch, 0, 0] for _ in at.readers]

    model, arch = build_model(cfg, info)
    task = make_task(model, cfg.loss)
    optimizer = make_optimizer(model, o)
    if ckpt:
        run_folder.restore(model, optimizer, ckpt, run_dir / "last.pt")
        del ckpt
    runner: torch.nn.Module = task
    if info.distributed:
        runner = DDP(task, device_ids=[info.device.index] if cuda else None,
                     find_unused_parameters=cfg.loss.method == "avid")  # fmt: skip
    if o.compile:
        runner = torch.compile(runner)
    params = [p for p in model.parameters() if p.requires_grad]
    guard = StepGuard(info.device, limit=o.max_nonfinite_steps, distributed_=info.distributed)

    run_folder.prepare_run_dir(run_dir, cfg, is_main=info.is_main)
    metrics = MetricsLog(run_dir, start_step=step) if info.is_main else None
    last_ckpt = run_dir / "last.pt" if step > 0 else None
    display = Display(total, enabled=show_progress and info.is_main)
    wait_s = busy_s = 0.0
    samples = 0
    last_loss = None  # on the device: read once, at the end
    skipped = 0
    t_log, n_log, wait_log = time.perf_counter(), 0, 0.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    runner.train()
    damage = Damage()
    for line in stream.damage.lines():
        display.print(f"pretrain: {line}; left out")
    if note is not None and info.is_main:
        display.print(f"pretrain: {note}")
    keylog = position.KeyLog(run_dir, info.rank, step=step) if o.record_keys else None
    try:
        stream.epoch.set(layout.epoch)  # the epoch the stream started in seeds its order
        batches = iter(stream.loader)  # endless: one iterator for the whole run
        while step < total:
            t0 = time.perf_counter()
            if dog is not None:
                dog.progress(step, "waiting for its data loader")
            batch = next(batches)
            if dog is not None:
                dog.progress(step, "in the step")
            _note_damage(damage, batch.pop("damage"), display)
            reader = batch.pop(position.READER)
            at.note(reader)
            if keylog is not None:
                keylog.write(step + 1, batch["key"], reader["epochs"])
            with observer(step) if observer is not None else contextlib.nullcontext():
                spec = batch["spec"].to(info.device, non_blocking=True)
                video_ids = batch["video_id"].to(info.device, non_blocking=True)
                extra = {}  # lla: the synchronization negatives
                if "spec_shifted" in batch:
                    extra["spec_shifted"] = batch["spec_shifted"].to(info.device, non_blocking=True)
                t1 = time.perf_counter()
                video = batch_video(batch, info.device, cfg.data.crop_px)  # resize?, jitter, norm
                batch_memory.release(batch.pop(batch_memory.KEY, None))  # copied out: reusable
                lr = schedule(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    out = runner(video, spec, step, video_ids, **extra)  # same-video: no negatives
                loss = out["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.found_inf = guard.gate(loss, grad_norm(params, o.grad_clip), step)
                optimizer.step()
                step += 1
                t2 = time.perf_counter()
                wait_s, busy_s = wait_s + (t1 - t0), busy_s + (t2 - t0)
                wait_log += t1 - t0
                samples += video.shape[0]
                n_log += video.shape[0]
                last_loss = loss.detach()
                if step % o.log_every_steps == 0 or step == total:
                    skipped = _log(out, guard, task, step, per_epoch, lr, info, metrics, display,
                                   last_ckpt, n_log / max(time.perf_counter() - t_log, 1e-9),
                                   wait_log / max(time.perf_counter() - t_log, 1e-9))  # fmt: skip
                    t_log, n_log, wait_log = time.perf_counter(), 0, 0.0
                if step % o.save_every_steps == 0 or step == total:
                    if dog is not None:
                        dog.progress(step, "saving a checkpoint")
                    layout.readers = distributed.gather_objects(at.readers)
                    layout.prune()
                    last_ckpt = run_folder.save(run_dir, model, optimizer, cfg, schedule, step,
                                                per_epoch, info.is_main, arch, guard=guard,
                                                last_ckpt=last_ckpt, data_state=layout.to_dict())  # fmt: skip
    finally:
        display.stop()
        if metrics is not None:
            metrics.close()
        if keylog is not None:
            keylog.close()
    (run_dir / "ranks" / f"rank-{info.rank:05d}.json").write_text(
        json.dumps(
            {"rank": info.rank, "world_size": info.world_size, "step": step, "samples": samples}
        )
    )
    damage.update(stream.damage)
    total = Damage()
    for rank_damage in distributed.gather_objects(damage):
        total.update(rank_damage)
    skipped = int(to_host(guard.values())[0])
    final_loss = None if last_loss is None else float(to_host(last_loss.float()))
    return TrainResult(run_dir, step, step / per_epoch if per_epoch else 0.0, last_ckpt, final_loss,
                       samples * info.world_size / max(busy_s, 1e-9), wait_s / max(busy_s, 1e-9),
                       total, skipped)  # fmt: skip


def _log(out, guard: StepGuard, task, step, per_epoch, lr, info, metrics, display, last_ckpt,
         samples_per_s: float, wait_frac: float) -> int:  # fmt: skip
    """One record from the step's outputs and the guard's counters, copied to the host in one
    transfer (the log step's only sync; one all-reduce for all of them under DDP); stops the
    run after ``max_nonfinite_steps`` skipped steps in a row. The skipped-step count."""
    names = list(out)
    terms = torch.stack([out[k].detach().float().reshape(()) for k in names])
    if info.distributed:
        dist.all_reduce(terms)
        terms = terms / info.world_size
    host = to_host(torch.cat([terms.double(), guard.values().double()]))
    values, counters = host[: len(names)], host[len(names) :]
    problem = guard.problem(counters)
    if problem is not None:
        raise TrainingError(f"{problem}; {guard.limit} steps in a row skipped, stopped. "
                            f"{run_folder.kept_line(last_ckpt)}")  # fmt: skip
    record = {"step": step, "epoch": step / per_epoch if per_epoch else None, "lr": lr}
    record.update(dict(zip(names, values, strict=True)))
    record["skipped_steps"] = int(counters[0])
    record["attention_weight"] = task.attention_weight(step - 1)
    record["samples_per_s"] = samples_per_s * info.world_size
    record["data_wait_frac"] = wait_frac
    if metrics is not None:
        metrics.write(record)
    display.update(record)
    return int(counters[0])


def _note_damage(damage: Damage, markers: list[dict], display: Display) -> None:
    """Tally the damage a batch's samples passed over; say so the first time for a shard."""
    for m in markers:
        new = m["__url__"] not in damage.samples and m["__url__"] not in damage.cut_short
        damage.note(m)
        if new:
            what = "damaged samples skipped" if m["__kind__"] == "sample" else "read stopped"
            display.print(f"pretrain: shard {m['__url__']}: {what} ({m['__error__']})")
