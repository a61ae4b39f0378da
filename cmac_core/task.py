"""The pretraining task: joins the model's features and the loss modules.

``cmac``: L = L_nce + w(step) * (lambda_v * L_att_v + lambda_a * L_att_a) with
attention-pooled embeddings; ``avid``: L = L_nce with mean-pooled embeddings
(the baseline). w(step) is 0 before ``attention_warmup_steps`` and ramps
linearly to 1 over the next ``attention_warmup_steps``.
"""

from __future__ import annotations

import torch
from torch import nn

from cmac_core.config import LossConfig
from cmac_core.losses import AttentionConsistency, CrossModalNCE


class PretrainTask(nn.Module):
    def __init__(self, model: nn.Module, cfg: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.nce = CrossModalNCE(cfg.nce_temperature, within_modal=cfg.within_modal_negatives)
        self.attention = AttentionConsistency(cfg.target_temperature)

    def attention_weight(self, step: int) -> float:
        w = self.cfg.attention_warmup_steps
        if self.cfg.method != "cmac" or step < w:
            return 0.0
        return min(1.0, (step - w + 1) / max(1, w))

    def forward(
        self, video: torch.Tensor, spec: torch.Tensor, step: int
    ) -> dict[str, torch.Tensor]:
        """Loss terms and ``loss`` (their weighted sum) for one batch."""
        model = self.model
        feats = model(video, spec)
        cmac = self.cfg.method == "cmac"
        z_v, z_a = model.embed(feats, attention=cmac)
        out = {"nce": self.nce(z_v, z_a)}
        loss = out["nce"]
        weight = self.attention_weight(step)
        if cmac:
            r_v, r_a = model.region_embeddings(feats)
            out["att_v"] = self.attention(feats["alpha_v"], r_v, z_a.detach())
            out["att_a"] = self.attention(feats["alpha_a"], r_a, z_v.detach())
            if weight > 0:
                loss = loss + weight * (
                    self.cfg.lambda_video * out["att_v"] + self.cfg.lambda_audio * out["att_a"]
                )
        out["loss"] = loss
        return out
