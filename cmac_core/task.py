"""The pretraining task: joins the model's features and the loss modules.

``cmac``: L = L_nce + w(step) * (lambda_v * L_att_v + lambda_a * L_att_a) with
attention-pooled embeddings; ``avid``: L = L_nce with mean-pooled embeddings
(the baseline). w(step) is 0 before ``attention_warmup_steps`` and ramps
linearly to 1 over the next ``attention_warmup_steps``.

Beside the loss terms the output holds diagnostics, detached, never in the loss:
the normalised entropies H / log N (batch means, in [0, 1]; 1 = uniform) of the
cross-modal targets ``entropy_beta_v`` / ``entropy_beta_a`` (both methods) and of
the single-modality attention ``entropy_alpha_v`` / ``entropy_alpha_a`` (``cmac``
only: ``avid`` never trains its scorers). Near 1 throughout, the tokens have
collapsed to spatially uniform ones, which makes the consistency term zero.
"""

from __future__ import annotations

import torch
from torch import nn

from cmac_core.config import LossConfig
from cmac_core.losses import (
    AttentionConsistency,
    CrossModalNCE,
    cross_modal_target,
    normalised_entropy,
)
from cmac_core.targets import MomentumTeacher


class PretrainTask(nn.Module):
    def __init__(self, model: nn.Module, cfg: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.nce = CrossModalNCE(cfg.nce_temperature, within_modal=cfg.within_modal_negatives)
        self.attention = AttentionConsistency()
        m = cfg.target_momentum
        self.teacher = MomentumTeacher(m) if m > 0 and cfg.method == "cmac" else None

    def attention_weight(self, step: int) -> float:
        w = self.cfg.attention_warmup_steps
        if self.cfg.method != "cmac" or step < w:
            return 0.0
        return min(1.0, (step - w + 1) / max(1, w))

    def forward(
        self,
        video: torch.Tensor,
        spec: torch.Tensor,
        step: int,
        video_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms, ``loss`` (their weighted sum) and the entropies for one batch.

        ``video_ids`` ``[B]``: an integer per clip naming its source video; clips of one
        video are then no negatives of each other (``CrossModalNCE``)."""
        model = self.model
        feats = model(video, spec)
        cmac = self.cfg.method == "cmac"
        z_v, z_a = model.embed(feats, attention=cmac)
        out = {"nce": self.nce(z_v, z_a, video_ids)}
        loss = out["nce"]
        weight = self.attention_weight(step)
        with torch.no_grad():
            if self.teacher is not None:  # targets from the momentum copy (cmac_core/targets.py)
                if self.training or self.teacher.model is None:
                    self.teacher.update(model)
                r_v, r_a, t_v, t_a = self.teacher.features(video, spec, attention=cmac)
            else:
                r_v, r_a = model.region_embeddings(feats)
                t_v, t_a = z_v.detach(), z_a.detach()
            tau = self.cfg.target_temperature
            beta_v = cross_modal_target(r_v.float(), t_a.float(), tau)
            beta_a = cross_modal_target(r_a.float(), t_v.float(), tau)
        if cmac:
            out["att_v"] = self.attention(feats["alpha_v_logits"], beta_v)
            out["att_a"] = self.attention(feats["alpha_a_logits"], beta_a)
            if weight > 0:
                loss = loss + weight * (
                    self.cfg.lambda_video * out["att_v"] + self.cfg.lambda_audio * out["att_a"]
                )
            out["entropy_alpha_v"] = normalised_entropy(feats["alpha_v_logits"].log_softmax(-1))
            out["entropy_alpha_a"] = normalised_entropy(feats["alpha_a_logits"].log_softmax(-1))
        out["entropy_beta_v"] = normalised_entropy(beta_v.clamp_min(1e-30).log())
        out["entropy_beta_a"] = normalised_entropy(beta_a.clamp_min(1e-30).log())
        out["loss"] = loss
        return out
