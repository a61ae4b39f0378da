"""The CMAC model: two encoders, attention scorers and projection heads.

The model returns features; the objectives live in ``cmac_core.losses`` and
``cmac_core.task`` joins them. Shapes (B batch, C channels, D embedding):

- ``v_tokens`` ``[B, S, C]``: visual regions, conv5 averaged over time (S = h*w).
- ``a_tokens`` ``[B, K, C]``: audio frequency tokens, conv5 averaged over time (its
  frequency rows, or ``audio_freq_tokens`` average-pooled bands of them).
- ``alpha_v_logits`` ``[B, S]`` / ``alpha_a_logits`` ``[B, K]``: a small learned scorer's
  logits; ``alpha_v`` / ``alpha_a``: their softmax, the attention from one modality alone.
  Losses take the logits (``log_softmax`` keeps the gradient where alpha saturates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmac_core.config import ConfigError, ModelConfig
from cmac_core.models.audio_encoder import AudioEncoder
from cmac_core.models.video_encoder import VideoEncoder


def encoders(cfg: ModelConfig) -> tuple[VideoEncoder, AudioEncoder]:
    """The two backbones of ``cfg``, shared by every method's model (same weight names)."""
    video = VideoEncoder(cfg.video_widths, cfg.video_blocks, keep_time=cfg.keep_time,
                         motion=cfg.video_motion)  # fmt: skip
    audio = AudioEncoder(cfg.audio_widths, cfg.audio_blocks, freq_stride=cfg.audio_freq_stride,
                         keep_time=cfg.keep_time)  # fmt: skip
    return video, audio


class ProjectionHead(nn.Module):
    """``[..., C]`` -> L2-normalised ``[..., D]`` (C -> hidden -> D, as 512 -> 512 -> 128)."""

    def __init__(self, c_in: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)


class Scorer(nn.Module):
    """A small MLP giving one attention logit per token: ``[B, N, C]`` -> ``[B, N]``."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        hidden = max(8, c_in // 4)
        self.mlp = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens).squeeze(-1)


class CMACModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video, self.audio = encoders(cfg)
        c = self.video.out_channels
        self.video_scorer, self.audio_scorer = Scorer(c), Scorer(c)
        self.video_head = ProjectionHead(c, cfg.head_hidden, cfg.embed_dim)
        self.audio_head = ProjectionHead(c, cfg.head_hidden, cfg.embed_dim)

    def forward(self, video: torch.Tensor, spec: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video`` ``[B, 3, T, H, W]``, ``spec`` ``[B, 1, n_mels, n_columns]`` -> features."""
        v_map = self.video(video)  # [B, C, t, h, w]
        a_map = self.audio(spec)  # [B, C, f, t]
        v_tokens = v_map.float().mean(2).flatten(2).transpose(1, 2)  # [B, h*w, C]
        a_tokens = self.frequency_tokens(a_map.float().mean(3), spec.shape[2])  # [B, K, C]
        v_logits, a_logits = self.video_scorer(v_tokens), self.audio_scorer(a_tokens)
        return {
            "v_tokens": v_tokens,
            "a_tokens": a_tokens,
            "alpha_v_logits": v_logits,
            "alpha_a_logits": a_logits,
            "alpha_v": v_logits.softmax(-1),
            "alpha_a": a_logits.softmax(-1),
            "grid_hw": torch.tensor(v_map.shape[-2:]),
        }

    def frequency_tokens(self, rows: torch.Tensor, n_mels: int) -> torch.Tensor:
        """The conv5 map averaged over time ``[B, C, f]`` -> tokens ``[B, K, C]``: its f rows,
        or ``audio_freq_tokens`` adaptive-average-pooled bands of them (K <= f)."""
        k, f = self.cfg.audio_freq_tokens, rows.shape[-1]
        if k > f:
            raise ConfigError(
                f"model.audio_freq_tokens {k} is more than the {f} frequency rows the audio "
                f"encoder leaves of {n_mels} mel bins (n_mels / model.audio_freq_stride "
                f"{self.cfg.audio_freq_stride}): lower one of them"
            )
        if 0 < k < f:
            rows = F.adaptive_avg_pool1d(rows, k)
        return rows.transpose(1, 2)

    def pool(
        self, feats: dict[str, torch.Tensor], *, attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled backbone features ``[B, C]`` before the heads (what linear probes take):
        attention-pooled with alpha (CMAC) or mean-pooled."""
        if attention:
            v = (feats["alpha_v"].unsqueeze(-1) * feats["v_tokens"]).sum(1)
            a = (feats["alpha_a"].unsqueeze(-1) * feats["a_tokens"]).sum(1)
        else:
            v, a = feats["v_tokens"].mean(1), feats["a_tokens"].mean(1)
        return v, a

    def embed(
        self, feats: dict[str, torch.Tensor], *, attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global embeddings ``z_v, z_a`` ``[B, D]``: the heads over ``pool``."""
        v, a = self.pool(feats, attention=attention)
        return self.video_head(v), self.audio_head(a)

    def region_embeddings(
        self, feats: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """phi: every token through its modality's head, ``[B, S, D]`` and ``[B, K, D]``."""
        return self.video_head(feats["v_tokens"]), self.audio_head(feats["a_tokens"])
