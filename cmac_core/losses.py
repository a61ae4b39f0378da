"""The objectives, each its own module (see docs/method.md for the equations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmac_core.distributed import gather_with_grad, rank_and_world


class CrossModalNCE(nn.Module):
    """Symmetric cross-modal InfoNCE with optional within-modal negatives.

    For video anchor i the positive is audio i; negatives are every other audio
    clip and (``within_modal``) every other video clip of the global batch, and
    symmetrically for audio anchors. Under DDP the candidates are gathered from
    all ranks with gradients, so the negatives are the global batch.
    """

    def __init__(self, temperature: float = 0.07, *, within_modal: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.within_modal = within_modal

    def _direction(
        self, anchor: torch.Tensor, pos_all: torch.Tensor, same_all: torch.Tensor, offset: int
    ):
        b = anchor.shape[0]
        idx = torch.arange(b, device=anchor.device) + offset
        cross = anchor @ pos_all.t() / self.temperature  # [b, N]
        if not self.within_modal:
            return F.cross_entropy(cross, idx)
        within = anchor @ same_all.t() / self.temperature  # [b, N]
        within = within.masked_fill(F.one_hot(idx, same_all.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(torch.cat([cross, within], dim=1), idx)

    def forward(self, z_v: torch.Tensor, z_a: torch.Tensor) -> torch.Tensor:
        """``z_v``, ``z_a``: this rank's L2-normalised ``[B, D]`` embeddings."""
        rank, _ = rank_and_world()
        v_all, a_all = gather_with_grad(z_v), gather_with_grad(z_a)
        offset = rank * z_v.shape[0]
        return 0.5 * (
            self._direction(z_v, a_all, v_all, offset) + self._direction(z_a, v_all, a_all, offset)
        )


def cross_modal_target(
    regions: torch.Tensor, guide: torch.Tensor, temperature: float
) -> torch.Tensor:
    """beta = softmax_n(<phi(x_n), z_other> / tau_b): ``[B, N, D]``, ``[B, D]`` -> ``[B, N]``."""
    return (torch.einsum("bnd,bd->bn", regions, guide) / temperature).softmax(-1)


class AttentionConsistency(nn.Module):
    """KL(beta || alpha): the single-modality attention alpha follows the target beta.

    beta is guided by the other modality and carries no gradient.
    """

    def __init__(self, target_temperature: float = 0.1) -> None:
        super().__init__()
        self.target_temperature = target_temperature

    def forward(
        self, alpha: torch.Tensor, regions: torch.Tensor, guide: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            beta = cross_modal_target(regions.float(), guide.float(), self.target_temperature)
        log_alpha = alpha.float().clamp_min(1e-12).log()
        return F.kl_div(log_alpha, beta, reduction="batchmean")
