"""Cross-modal targets from a slowly moving copy of the model (``loss.target_momentum``).

CMAC's targets ``beta`` are scored by the model being trained, so they move with every
step (``docs/method.md``). With ``target_momentum = m > 0`` they come instead from a
momentum copy, as the targets of BYOL, DINO and MoCo do: before each training step the
copy takes ``teacher <- m * teacher + (1 - m) * student`` (parameters; buffers such as
batch-norm statistics are copied), then scores the batch without gradient. The copy is
made from the student at the first step, so a resumed run starts its copy from the
restored weights (the copy is not in checkpoints). It costs one more forward pass per
step, without gradient.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumTeacher:
    """Holds the copy outside the task's modules: not trained, not in the optimizer, not
    wrapped by DDP (every rank updates it from the same weights, so the copies agree)."""

    def __init__(self, momentum: float) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"target momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.model: nn.Module | None = None

    @torch.compiler.disable
    @torch.no_grad()
    def update(self, student: nn.Module) -> nn.Module:
        """One momentum step towards ``student`` (the first call copies it); the copy."""
        if self.model is None:
            self.model = copy.deepcopy(student).requires_grad_(False)
        else:
            for t, s in zip(self.model.parameters(), student.parameters(), strict=True):
                t.lerp_(s.detach(), 1.0 - self.momentum)
            for t, s in zip(self.model.buffers(), student.buffers(), strict=True):
                t.copy_(s)
        self.model.train(student.training)
        return self.model

    @torch.compiler.disable
    @torch.no_grad()
    def features(self, video: torch.Tensor, spec: torch.Tensor, *, attention: bool):
        """The copy's ``(region embeddings r_v, r_a, clip embeddings z_v, z_a)`` of a batch."""
        feats = self.model(video, spec)
        z_v, z_a = self.model.embed(feats, attention=attention)
        r_v, r_a = self.model.region_embeddings(feats)
        return r_v, r_a, z_v, z_a
