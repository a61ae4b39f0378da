"""How a model sits on its device: memory formats and batch-norm statistics across ranks.

``use_channels_last``: each encoder gets the format that fits its convolutions, the
video encoder's 3-D ones ``channels_last_3d`` and the audio encoder's 2-D ones
``channels_last`` (one format for the whole model fails: ``channels_last_3d`` needs rank-5
tensors), and converts its input to it. ``sync_batchnorm``: BatchNorm layers normalise
over the global batch of every rank (PyTorch's SyncBatchNorm on CUDA; ``GlobalBatchNorm``,
the same statistics through differentiable all-reduces, on any other device and backend,
such as gloo on CPU). Neither changes a weight's name or shape: checkpoints load into
plain models.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def use_channels_last(model: nn.Module) -> nn.Module:
    """``model``'s encoders (``model.video``, ``model.audio``) in channels-last formats, in
    place: weights converted, inputs converted in their ``forward``."""
    for encoder, fmt in ((model.video, torch.channels_last_3d), (model.audio, torch.channels_last)):
        encoder.to(memory_format=fmt)
        encoder.input_format = fmt
    return model


class GlobalBatchNorm(_BatchNorm):
    """Batch norm over the batch of every rank of the process group, on any device.

    In training with a process group the per-channel sums and sums of squares (float32)
    and the count are summed over ranks with an autograd-aware all-reduce, so gradients
    flow across ranks as they would in one process holding the global batch; running
    statistics update as BatchNorm's do (unbiased variance). Otherwise it is BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):  # fmt: skip
            return super().forward(x)
        import torch.distributed.nn.functional as dist_fn  # noqa: PLC0415

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_full((1,), x.numel() / c)])
        total = dist_fn.all_reduce(local)
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                factor = (1.0 / self.num_batches_tracked.float()) if m is None else m
                self.running_mean.mul_(1 - factor).add_(factor * mean)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - factor).add_(factor * unbiased)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm replaced by one over all ranks' batches (same weights
    and buffers, same names): SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)  # fmt: skip
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def count_batchnorms(model: nn.Module) -> dict[str, int]:
    """How many BatchNorm layers of each class ``model`` holds (what a conversion did)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts
