"""Grad-CAM of a pair's similarity: where in the frame the clip's sound is matched, by the
model's own pooling.

A model trained with pooled features (``CMACModel.pool``: the mean of the region tokens
for avid, their alpha-weighted sum for CMAC) scores a clip's pair as
``s = <head(p), z_a>``, ``p`` the pooled feature. Its heads never see a single region's
token, so the per-region map ``beta_v = softmax_n <head(v_n), z_a>`` (CMAC's target) asks
avid's head about inputs it was not trained on. Grad-CAM (Selvaraju et al. 2017) asks the
model the question it was trained on: with ``g = ds/dp``, region ``n`` scores
``<v_n - p, g>``, how the pair's similarity moves as the pooled feature moves towards
that region. As in Grad-CAM only positive evidence is kept (a ReLU: regions that would
raise the pair's similarity above the pooled feature's); the map is normalised to sum 1
over the grid (uniform where no region is positive). Some region always is, or all are
0: the pooling weights average ``v_n - p`` to zero, so the peak is the unclipped map's.
"""

from __future__ import annotations

import torch


def gradcam(
    model, feats: dict[str, torch.Tensor], z_a: torch.Tensor, *, attention: bool
) -> torch.Tensor:
    """``[B, S]``: each region's Grad-CAM for the pair (``feats`` from ``model(video, spec)``,
    ``z_a [B, D]`` the audio embeddings the pair is scored with), >= 0, summing to 1."""
    with torch.inference_mode(False), torch.enable_grad():
        tokens = feats["v_tokens"].detach().clone().float()  # [B, S, C]
        pooled, _ = model.pool({**feats, "v_tokens": tokens}, attention=attention)
        pooled = pooled.detach().requires_grad_(True)
        score = (model.video_head(pooled) * z_a.detach().clone().float()).sum()
        (grad,) = torch.autograd.grad(score, pooled)  # [B, C]: each pair's own gradient
    cam = torch.einsum("bsc,bc->bs", tokens - pooled.detach().unsqueeze(1), grad)
    cam = cam.clamp_min(0.0)
    total = cam.sum(dim=1, keepdim=True)
    uniform = torch.full_like(cam, 1.0 / cam.shape[1])
    return torch.where(total > 0, cam / total.clamp_min(torch.finfo(cam.dtype).tiny), uniform)
