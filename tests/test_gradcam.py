"""Grad-CAM of a pair's similarity (cmac_core/gradcam.py): each region's value is the
directional derivative of s = <head(p), z_a> as the pooled feature p moves towards that
region, measured here by finite differences through the real model, for mean pooling
(avid) and attention pooling (CMAC), under no_grad as maps are made."""

from __future__ import annotations

import pytest
import torch

from cmac_core.config import ModelConfig
from cmac_core.gradcam import gradcam
from cmac_core.models.cmac import CMACModel


def _model_and_feats(seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(video_widths=(8, 8, 16, 16), audio_widths=(8, 8, 16, 16),
                      video_blocks=(1, 1, 1, 1), audio_blocks=(1, 1, 1, 1),
                      head_hidden=16, embed_dim=8)  # fmt: skip
    model = CMACModel(cfg).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 4, 64, 64), torch.randn(2, 1, 64, 32))
    return model, feats


def _normalised(raw: torch.Tensor) -> torch.Tensor:
    positive = raw.clamp_min(0.0)  # Grad-CAM's ReLU: positive evidence only
    return positive / positive.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("attention", [False, True])
def test_each_region_scores_how_the_pair_similarity_moves_towards_it(attention):
    model, feats = _model_and_feats(0)
    with torch.no_grad():
        _, z_a = model.embed(feats, attention=attention)
        cam = gradcam(model, feats, z_a, attention=attention)
        pooled, _ = model.pool(feats, attention=attention)
        pooled, tokens = pooled.double(), feats["v_tokens"].double()
        head = model.video_head.double()
        eps = 1e-6

        def score(p):
            return (head(p) * z_a.double()).sum(-1)

        raw = torch.stack([
            (score(pooled + eps * (tokens[:, n] - pooled)) - score(pooled - eps * (tokens[:, n] - pooled))) / (2 * eps)
            for n in range(tokens.shape[1])
        ], dim=1)  # fmt: skip
    assert cam.shape == raw.shape == (2, 16)
    assert torch.all(cam >= 0) and torch.allclose(cam.sum(1), torch.ones(2))
    torch.testing.assert_close(cam.double(), _normalised(raw), atol=1e-5, rtol=1e-4)
    assert raw.std() > 0 and torch.equal(cam.argmax(1), raw.argmax(1))
    assert (raw < 0).any() and (cam == 0).any()  # negative evidence is dropped, not shifted


def test_the_pooling_decides_the_map():
    """Mean and attention pooling ask different questions of the same model."""
    model, feats = _model_and_feats(1)
    feats = {**feats, "alpha_v": torch.softmax(torch.randn(2, 16) * 3, -1)}
    with torch.no_grad():
        _, z_a = model.embed(feats, attention=False)
        mean_cam = gradcam(model, feats, z_a, attention=False)
        att_cam = gradcam(model, feats, z_a, attention=True)
    assert not torch.allclose(mean_cam, att_cam)


def test_works_in_inference_mode_and_leaves_no_gradient():
    model, feats = _model_and_feats(2)
    with torch.inference_mode():
        feats = model(torch.randn(1, 3, 4, 64, 64), torch.randn(1, 1, 64, 32))
        _, z_a = model.embed(feats, attention=True)
        cam = gradcam(model, feats, z_a, attention=True)
    assert cam.shape == (1, 16) and torch.isfinite(cam).all()
    assert all(p.grad is None for p in model.parameters())


def test_a_flat_map_is_uniform_not_nan():
    model, feats = _model_and_feats(3)
    feats = {**feats, "v_tokens": feats["v_tokens"][:, :1].expand(-1, 16, -1).clone()}
    with torch.no_grad():
        _, z_a = model.embed(feats, attention=False)
        cam = gradcam(model, feats, z_a, attention=False)
    torch.testing.assert_close(cam, torch.full((2, 16), 1 / 16))
