"""The objectives, each its own module (see docs/method.md for the equations)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cmac_core.distributed import gather_with_grad, rank_and_world


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """All ranks' ``[B]`` integer ids concatenated in rank order (no gradient), as
    ``gather_with_grad`` concatenates the embeddings."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


class CrossModalNCE(nn.Module):
    """Symmetric cross-modal InfoNCE with optional within-modal negatives.

    For video anchor i the positive is audio i; negatives are every other audio
    clip and (``within_modal``) every other video clip of the global batch, and
    symmetrically for audio anchors. Under DDP the candidates are gathered from
    all ranks with gradients, so the negatives are the global batch. With
    ``video_ids`` (``[B]`` integers, one per source video) clips of the anchor's own
    video are no negatives (consecutive segments of one video look and sound
    alike); the positive stays.
    """

    def __init__(self, temperature: float = 0.07, *, within_modal: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.within_modal = within_modal

    def _direction(
        self,
        anchor: torch.Tensor,
        pos_all: torch.Tensor,
        same_all: torch.Tensor,
        idx: torch.Tensor,
        same_video: torch.Tensor | None,
    ):
        cross = anchor @ pos_all.t() / self.temperature  # [b, N]
        if same_video is not None:
            cross = cross.masked_fill(same_video, float("-inf"))
        if not self.within_modal:
            return F.cross_entropy(cross, idx)
        within = anchor @ same_all.t() / self.temperature  # [b, N]
        own = F.one_hot(idx, same_all.shape[0]).bool()
        within = within.masked_fill(own if same_video is None else own | same_video, float("-inf"))
        return F.cross_entropy(torch.cat([cross, within], dim=1), idx)

    def forward(
        self, z_v: torch.Tensor, z_a: torch.Tensor, video_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``z_v``, ``z_a``: this rank's L2-normalised ``[B, D]`` embeddings; ``video_ids``:
        this rank's ``[B]`` integer video identities (None: every other clip is a negative)."""
        rank, _ = rank_and_world()
        v_all, a_all = gather_with_grad(z_v), gather_with_grad(z_a)
        idx = torch.arange(z_v.shape[0], device=z_v.device) + rank * z_v.shape[0]
        same_video = None
        if video_ids is not None:
            ids_all = gather_ids(video_ids.to(device=z_v.device, dtype=torch.int64))
            same_video = ids_all[idx].unsqueeze(1) == ids_all.unsqueeze(0)  # [b, N]
            same_video[torch.arange(len(idx), device=z_v.device), idx] = False  # the positive
        return 0.5 * (
            self._direction(z_v, a_all, v_all, idx, same_video)
            + self._direction(z_a, v_all, a_all, idx, same_video)
        )


def cross_modal_target(
    regions: torch.Tensor, guide: torch.Tensor, temperature: float
) -> torch.Tensor:
    """beta = softmax_n(<phi(x_n), z_other> / tau_b): ``[B, N, D]``, ``[B, D]`` -> ``[B, N]``."""
    return (torch.einsum("bnd,bd->bn", regions, guide) / temperature).softmax(-1)


def normalised_entropy(log_p: torch.Tensor) -> torch.Tensor:
    """H(p) / log N, the batch mean, of distributions given as ``[B, N]`` log-probabilities:
    1 = uniform over the N tokens, 0 = all on one. Detached (a diagnostic, never a loss);
    1.0 where N = 1 (a single token is uniform)."""
    log_p = log_p.detach().float()
    n = log_p.shape[-1]
    if n < 2:
        return log_p.new_ones(())
    h = -(log_p.exp() * log_p).nan_to_num(0.0).sum(-1)  # 0 * log 0 = 0
    return h.mean() / math.log(n)


class AttentionConsistency(nn.Module):
    """KL(beta || alpha), alpha = softmax(logits): the single-modality attention follows
    the target beta (``[B, N]``, guided by the other modality; it carries no gradient).

    Computed from the logits with ``log_softmax``: a saturated alpha (logits such as
    (30, 0, 0, 0)) keeps its gradient, which ``log(alpha.clamp(...))`` loses.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_alpha = F.log_softmax(logits.float(), dim=-1)
        return F.kl_div(log_alpha, target.detach().float(), reduction="batchmean")


class SyncBCE(nn.Module):
    """The synchronization pretext: binary cross-entropy of sync logits ``[N]`` against
    labels ``[N]`` (1 = aligned, 0 = shifted or another video's audio), the mean over N."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
