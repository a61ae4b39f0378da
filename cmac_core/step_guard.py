"""Non-finite training steps, found and skipped on the device: no host-device sync per step.

``grad_norm`` is the global gradient norm (clipping as it goes); ``StepGuard.gate`` turns
a non-finite loss (on any rank) or norm into the fused optimizer's ``found_inf``, which
skips the update on the device, and keeps counters the trainer reads with its log
records; ``weights_finite`` is what every rank checks before a checkpoint is written.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class StepGuard:
    """Skips the updates whose loss or gradient norm is not finite, with no host-device sync.

    Per step, on the device: ``bad`` (the loss on any rank, or the global gradient norm,
    not finite) goes to the fused optimizer as ``found_inf``, which then leaves weights and
    state as they were; counters of skipped steps and of the current run of them follow.
    The host reads them only with the values it logs, and before each save (``values``).
    """

    FIELDS = ("skipped", "streak", "start", "start_loss", "failed_at", "failed_loss")

    def __init__(self, device: torch.device, *, limit: int, distributed_: bool) -> None:
        self.limit, self.distributed = limit, distributed_
        self.t = torch.zeros(len(self.FIELDS), dtype=torch.int64, device=device)
        self.t[4] = -1  # failed_at: none yet

    def gate(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> torch.Tensor:
        """The optimizer's ``found_inf`` (0-dim float32: 1 = skip this update)."""
        loss_bad = (~torch.isfinite(loss.detach()).all()).to(torch.float32)
        if self.distributed:  # the same decision on every rank: their weights stay equal
            dist.all_reduce(loss_bad, op=dist.ReduceOp.MAX)
        loss_bad = loss_bad > 0
        bad = loss_bad | ~torch.isfinite(grad_norm)
        skipped, streak, start, start_loss, failed_at, failed_loss = self.t.unbind()
        starts = bad & (streak == 0)
        start = torch.where(starts, step, start)
        start_loss = torch.where(starts, loss_bad.long(), start_loss)
        streak = (streak + 1) * bad.long()
        hit = (streak >= self.limit) & (failed_at < 0)
        self.t = torch.stack([skipped + bad.long(), streak, start, start_loss,
                              torch.where(hit, start, failed_at), torch.where(hit, start_loss, failed_loss)])  # fmt: skip
        return bad.to(torch.float32)

    def values(self) -> torch.Tensor:
        return self.t

    def problem(self, values: list[int], *, current: bool = False) -> str | None:
        """What went wrong, from ``values`` read on the host: a run of ``limit`` skipped
        steps (or with ``current``, the run going on now), else None."""
        v = dict(zip(self.FIELDS, (int(x) for x in values), strict=True))
        if v["failed_at"] >= 0:
            at, loss = v["failed_at"], v["failed_loss"]
        elif current and v["streak"] > 0:
            at, loss = v["start"], v["start_loss"]
        else:
            return None
        what = "loss" if loss else "gradient norm"
        return f"{what} is not finite at step {at} (nan/inf)"


def weights_finite(model: torch.nn.Module) -> torch.Tensor:
    """0-dim bool on the device: every floating weight and buffer finite (max |x|: no
    overflow, NaN propagates)."""
    ts = [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all()


def grad_norm(params, clip: float) -> torch.Tensor:
    """The global gradient norm on the device (and the gradients clipped to ``clip`` > 0);
    non-finite where any entry is, which the guard reads."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def to_host(t: torch.Tensor) -> list:
    """The one place the training loop copies device values to the host (a sync): log
    steps, checks and saves only."""
    return t.tolist()
