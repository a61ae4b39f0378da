"""The co-attention network of "Look, Listen, and Attend" (Cheng et al., ACM MM 2020).

The CMAC encoders, whose conv5 maps become tokens that keep time, joined by L cascaded
co-attention modules; a pooled head scores whether the audio is in sync with the video.
The model returns features; the objective lives in ``cmac_core.losses.SyncBCE`` and
``cmac_core.sync_task`` joins them. Shapes (B batch, C channels, D embedding):

- visual tokens ``[B, Nv, C]``, ``Nv = t*h*w`` (the video encoder's last map, time kept);
  audio tokens ``[B, Na, C]``, ``Na = f*n`` (frequency x time of the audio encoder's).
  Each token gets a sinusoidal code of its place: time as a fraction of its window, shared
  by both modalities (aligned windows cover the same seconds), then (y, x) or frequency.
- ``audio_guided`` ``[B, Nv]``: the audio-guided attention (audio queries over visual
  tokens), averaged over heads, audio queries and modules; it sums to 1. ``beta_v``
  ``[B, h*w]``: the same summed over time, the sound-localization map; ``alpha_v`` is
  uniform (this method has no attention from vision alone).
- ``v_stream`` / ``a_stream``: the tokens after the last module.

Variants (``ModelConfig``): cross-attention only (``coattention_self`` false), cross then
self-attention, and cascaded (``coattention_layers`` L > 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmac_core.config import ModelConfig
from cmac_core.models.cmac import ProjectionHead, encoders


def sincos(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Positions ``[N]`` (fractions of a window, about [-0.5, 0.5]) -> codes ``[N, dim]``:
    sines and cosines of ``dim // 2`` frequencies from 1/4 to 32 cycles per window, so
    neighbouring cells of a grid of up to 64 differ and the coarsest code never wraps."""
    half = dim // 2
    freqs = torch.logspace(math.log10(0.25), math.log10(32.0), max(1, half), device=pos.device)
    angles = pos.float().unsqueeze(1) * freqs[:half] * (2 * math.pi)
    code = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(code, (0, dim - 2 * half))


def fractions(n: int, device: torch.device) -> torch.Tensor:
    """The centres of ``n`` equal cells of a window, as fractions in (-0.5, 0.5)."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n - 0.5


class Positions(nn.Module):
    """Adds each token's place: ``sincos(time)`` (shared) + a learned map of its (y, x) or
    frequency code. Functions of fractions, so any grid (a whole frame at localize) works."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c
        self.space = nn.Linear(2 * c, c)
        self.freq = nn.Linear(c, c)

    def video(self, v_map: torch.Tensor) -> torch.Tensor:
        """``[B, C, t, h, w]`` -> tokens ``[B, t*h*w, C]`` (time slowest)."""
        _, c, t, h, w = v_map.shape
        dev = v_map.device
        y, x = sincos(fractions(h, dev), c), sincos(fractions(w, dev), c)
        space = self.space(torch.cat([y[:, None].expand(h, w, c), x[None].expand(h, w, c)], -1))
        code = sincos(fractions(t, dev), c)[:, None, None] + space[None]  # [t, h, w, C]
        return v_map.float().flatten(2).transpose(1, 2) + code.reshape(1, t * h * w, c)

    def audio(self, a_map: torch.Tensor) -> torch.Tensor:
        """``[B, C, f, n]`` -> tokens ``[B, f*n, C]`` (frequency slowest)."""
        _, c, f, n = a_map.shape
        dev = a_map.device
        code = self.freq(sincos(fractions(f, dev), c))[:, None] + sincos(fractions(n, dev), c)[None]
        return a_map.float().flatten(2).transpose(1, 2) + code.reshape(1, f * n, c)


class StreamBlock(nn.Module):
    """Attention with a residual and LayerNorm, then a feed-forward layer likewise."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.ffn = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, *, weights: bool = False):
        """``q`` ``[B, Nq, C]`` attends over ``kv`` ``[B, Nk, C]`` -> ``([B, Nq, C], [B, Nq, Nk]
        head-averaged weights or None)``."""
        out, w = self.attn(q, kv, kv, need_weights=weights, average_attn_weights=True)
        x = self.norm1(q + out)
        return self.norm2(x + self.ffn(x)), w


class CoAttention(nn.Module):
    """One module: audio-guided (audio queries over visual tokens) and visual-guided (visual
    queries over audio tokens) attention side by side, then (``self_attention``) each stream
    attends over itself."""

    def __init__(self, c: int, heads: int, *, self_attention: bool) -> None:
        super().__init__()
        self.audio_guided, self.visual_guided = StreamBlock(c, heads), StreamBlock(c, heads)
        self.self_v = StreamBlock(c, heads) if self_attention else None
        self.self_a = StreamBlock(c, heads) if self_attention else None

    def forward(self, v: torch.Tensor, a: torch.Tensor):
        """``v`` ``[B, Nv, C]``, ``a`` ``[B, Na, C]`` -> ``(v, a, [B, Na, Nv] audio-guided weights)``."""
        a_new, w_av = self.audio_guided(a, v, weights=True)
        v_new, _ = self.visual_guided(v, a)
        if self.self_v is not None:
            v_new, _ = self.self_v(v_new, v_new)
            a_new, _ = self.self_a(a_new, a_new)
        return v_new, a_new, w_av


class LLAModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video, self.audio = encoders(cfg)
        c = self.video.out_channels
        self.positions = Positions(c)
        self.in_norm_v, self.in_norm_a = nn.LayerNorm(c), nn.LayerNorm(c)
        self.blocks = nn.ModuleList(
            CoAttention(c, cfg.coattention_heads, self_attention=cfg.coattention_self)
            for _ in range(cfg.coattention_layers)
        )
        self.video_head = ProjectionHead(c, cfg.head_hidden, cfg.embed_dim)
        self.audio_head = ProjectionHead(c, cfg.head_hidden, cfg.embed_dim)
        d = cfg.embed_dim
        self.sync_head = nn.Sequential(
            nn.Linear(3 * d, cfg.head_hidden), nn.ReLU(inplace=True), nn.Linear(cfg.head_hidden, 1)
        )

    def encode_video(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``[B, 3, T, H, W]`` -> encoder tokens with places ``[B, t*h*w, C]``, ``(t, h, w)``."""
        v_map = self.video(video)
        return self.positions.video(v_map), tuple(v_map.shape[2:])

    def encode_audio(self, spec: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, 1, n_mels, n_columns]`` -> encoder tokens with places ``[B, f*n, C]``, ``(f, n)``."""
        a_map = self.audio(spec)
        return self.positions.audio(a_map), tuple(a_map.shape[2:])

    def attend(self, v_tokens: torch.Tensor, a_tokens: torch.Tensor):
        """Encoder tokens -> ``(v_stream, a_stream, audio_guided [B, Nv])`` through the modules."""
        v, a = self.in_norm_v(v_tokens), self.in_norm_a(a_tokens)
        maps = []
        for block in self.blocks:
            v, a, w_av = block(v, a)
            maps.append(w_av.float().mean(1))  # over audio queries: [B, Nv]
        return v, a, torch.stack(maps).mean(0)

    def pair_logits(
        self,
        v_stream: torch.Tensor,
        a_stream: torch.Tensor,
        *,
        t: int = 1,
        f: int = 1,
        audio_guided: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The streams (``t`` visual time steps, ``f`` audio frequency rows) through the heads,
        then the sync head: ``[B]`` logits (> 0: in sync). ``model.sync_head`` "pooled": each
        stream averaged over all its tokens; "per_time": the visual stream averaged over
        space per time step, the audio stream over frequency and then over the same seconds
        (its time cells pooled to ``t``), each step scored, the scores averaged;
        "per_time_attended": as per_time, but each time step's visual tokens weighted by
        the audio-guided attention ``audio_guided`` ``[B, Nv]`` (renormalised per step)."""
        if self.cfg.sync_head == "pooled":
            v, a = v_stream.mean(1), a_stream.mean(1)
        else:
            b, _, c = v_stream.shape
            v = v_stream.reshape(b, t, -1, c)  # [B, t, S, C]: time is slowest
            if self.cfg.sync_head == "per_time_attended":
                w = audio_guided.reshape(b, t, -1, 1).to(v.dtype)
                v = (v * w).sum(2) / w.sum(2).clamp_min(1e-12)  # [B, t, C]
            else:
                v = v.mean(2)  # [B, t, C]
            a = a_stream.reshape(b, f, -1, c).mean(1)  # [B, n, C]: frequency is slowest
            a = F.adaptive_avg_pool1d(a.transpose(1, 2), t).transpose(1, 2)  # [B, t, C]
        z_v, z_a = self.video_head(v), self.audio_head(a)
        logits = self.sync_head(torch.cat([z_v, z_a, z_v * z_a], dim=-1)).squeeze(-1)
        return logits if logits.dim() == 1 else logits.mean(1)

    def sync_logits(
        self, video: torch.Tensor, spec: torch.Tensor, spec_other: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each clip with two audio windows: ``(logits [B] with spec, logits [B] with
        spec_other, audio_guided [2B, Nv])``; the video is encoded once."""
        v_tokens, (t, _, _) = self.encode_video(video)
        a_tokens, (f, _) = self.encode_audio(torch.cat([spec, spec_other]))
        v, a, audio_guided = self.attend(v_tokens.repeat(2, 1, 1), a_tokens)
        logits = self.pair_logits(v, a, t=t, f=f, audio_guided=audio_guided)
        b = video.shape[0]
        return logits[:b], logits[b:], audio_guided

    def forward(self, video: torch.Tensor, spec: torch.Tensor) -> dict[str, torch.Tensor]:
        """One audio window per clip -> features (module docstring), as ``CMACModel``'s:
        ``v_tokens`` / ``a_tokens`` the encoder tokens, plus the streams and maps."""
        v_tokens, (t, h, w) = self.encode_video(video)
        a_tokens, (f, _) = self.encode_audio(spec)
        v, a, audio_guided = self.attend(v_tokens, a_tokens)
        b, s = video.shape[0], h * w
        return {
            "v_tokens": v_tokens,
            "a_tokens": a_tokens,
            "v_stream": v,
            "a_stream": a,
            "audio_guided": audio_guided,
            "beta_v": audio_guided.reshape(b, t, s).sum(1),
            "alpha_v": audio_guided.new_full((b, s), 1.0 / s),
            "sync_logit": self.pair_logits(v, a, t=t, f=f, audio_guided=audio_guided),
            "grid_hw": torch.tensor([h, w]),
        }

    def pool(
        self, feats: dict[str, torch.Tensor], *, attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C]`` features: with ``attention`` the co-attended streams mean-pooled (what
        the sync head reads; each depends on both modalities), without it the encoders'
        own tokens mean-pooled (one modality each: what linear probes should take)."""
        if attention:
            return feats["v_stream"].mean(1), feats["a_stream"].mean(1)
        return feats["v_tokens"].mean(1), feats["a_tokens"].mean(1)

    def embed(
        self, feats: dict[str, torch.Tensor], *, attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_v, z_a`` ``[B, D]``: the heads over ``pool``."""
        v, a = self.pool(feats, attention=attention)
        return self.video_head(v), self.audio_head(a)


@torch.no_grad()
def sync_logits(
    model: LLAModel, video: torch.Tensor, spec_aligned: torch.Tensor, spec_shifted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The synchronization 2AFC's scores: ``video`` ``[B, 3, T, H, W]`` (normalised, as
    ``augment.finish_video`` makes it), two audio windows ``[B, 1, n_mels, n_columns]`` ->
    logits ``[B]`` for each. A clip is scored correct when ``aligned > shifted``."""
    aligned, shifted, _ = model.sync_logits(video, spec_aligned, spec_shifted)
    return aligned.float(), shifted.float()
