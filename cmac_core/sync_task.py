"""The synchronization task of ``--method lla``: joins the co-attention model and SyncBCE.

Every clip is scored twice, with its aligned audio (label 1) and with a negative (label
0), so each batch holds exactly as many positives as negatives. The negative is the same
segment's audio shifted by at least ``data.sync_shift_min_s`` (``cmac_core/data/sync.py``)
or, for a ``loss.sync_other_video_frac`` part of the clips and for every clip before step
``loss.sync_easy_steps`` (a curriculum, as in AVTS), the aligned audio of a clip of another
video in the batch (where the batch has one). L = BCE over the 2B pairs.

Beside the loss the output holds diagnostics, detached: ``sync_acc`` (pairs on the right
side of 0), ``positive_frac`` (0.5), ``other_video_frac`` (negatives from another video) and ``entropy_beta_v``, the
normalised entropy of the audio-guided attention over the t*h*w visual tokens (1 = uniform).
"""

from __future__ import annotations

import torch
from torch import nn

from cmac_core.config import LossConfig
from cmac_core.losses import SyncBCE, normalised_entropy
from cmac_core.task import PretrainTask


def other_video_partner(video_ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` indices: for clip i the nearest clip after it (cyclically) of another video,
    or i itself where every clip of the batch is of i's video."""
    b = video_ids.shape[0]
    idx = torch.arange(b, device=video_ids.device)
    partner = idx.clone()
    found = torch.zeros(b, dtype=torch.bool, device=video_ids.device)
    for k in range(1, b):  # torch.where, not mask indexing: no host-device sync
        cand = (idx + k) % b
        new = ~found & (video_ids[cand] != video_ids)
        partner, found = torch.where(new, cand, partner), found | new
    return partner


class SyncTask(nn.Module):
    def __init__(self, model: nn.Module, cfg: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.bce = SyncBCE()

    def attention_weight(self, step: int) -> float:
        """No attention-consistency terms in this method (the trainer logs the weight)."""
        return 0.0

    def other_video_mask(self, b: int, step: int, device: torch.device) -> torch.Tensor:
        """``[B]`` bool: which clips take another video's audio as their negative."""
        if step < self.cfg.sync_easy_steps:
            return torch.ones(b, dtype=torch.bool, device=device)
        frac = self.cfg.sync_other_video_frac
        if frac <= 0:
            return torch.zeros(b, dtype=torch.bool, device=device)
        return torch.rand(b, device=device) < frac

    def forward(
        self,
        video: torch.Tensor,
        spec: torch.Tensor,
        step: int,
        video_ids: torch.Tensor | None = None,
        spec_shifted: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``video`` ``[B, 3, T, H, W]``, ``spec`` / ``spec_shifted`` ``[B, 1, n_mels, n]`` ->
        ``sync``, ``loss`` and the diagnostics for one batch."""
        if spec_shifted is None:
            raise ValueError("the lla task needs spec_shifted: data.sync_shift_min_s > 0")
        b = video.shape[0]
        negative = spec_shifted
        other = torch.zeros(b, dtype=torch.bool, device=video.device)
        if video_ids is not None:
            partner = other_video_partner(video_ids)
            has_other = partner != torch.arange(b, device=video.device)
            other = self.other_video_mask(b, step, video.device) & has_other
            # always the select (no `if other.any()`: a host-device sync every step)
            negative = torch.where(other.view(b, 1, 1, 1), spec[partner], spec_shifted)
        pos, neg, audio_guided = self.model.sync_logits(video, spec, negative)
        logits = torch.cat([pos, neg])
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        out = {"sync": self.bce(logits, labels)}
        with torch.no_grad():
            out["sync_acc"] = ((logits.float() > 0) == (labels > 0.5)).float().mean()
            out["other_video_frac"] = other.float().mean()
            out["positive_frac"] = labels.float().mean()  # 0.5: balanced by construction
            out["entropy_beta_v"] = normalised_entropy(audio_guided.clamp_min(1e-30).log())
        out["loss"] = out["sync"]
        return out


def make_task(model: nn.Module, cfg: LossConfig) -> nn.Module:
    """The task of ``cfg.method``: SyncTask for lla, PretrainTask for cmac and avid."""
    return SyncTask(model, cfg) if cfg.method == "lla" else PretrainTask(model, cfg)
