"""A checkpoint's model, frozen for embedding: validated, sized and loaded safely."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

import cmac_core
from avprep import schema
from cmac_core import checkpoint
from cmac_core.config import ConfigError, PretrainConfig
from cmac_core.data.augment import finish_video
from cmac_core.models import REGISTRY, build


@dataclass
class Frozen:
    """A checkpoint's model in eval mode, with what the table records about it."""

    model: torch.nn.Module
    cfg: PretrainConfig
    metadata: dict[str, str]
    attention: bool

    @classmethod
    def load(cls, path: str | Path, device: torch.device, *, clips: int = 1) -> Frozen:
        """``clips``: how many clips of the checkpoint's data config go through the model at
        once (embed's batch; localize's one): a model and clips that would not fit in the
        memory free are refused in one line (``model_of``)."""
        ckpt = checkpoint.load(path, map_location="cpu")
        cfg, model = model_of(ckpt, path, device, clips=clips)
        model.to(device).eval()
        meta = {
            "checkpoint_sha256": checkpoint.sha256(path),
            "checkpoint_step": str(ckpt["step"]),
            "method": cfg.loss.method,
            "config": json.dumps(cfg.to_dict()),
            "schema_version": str(schema.SCHEMA_VERSION),
            "cmac_core_version": cmac_core.__version__,
        }
        return cls(model, cfg, meta, attention=cfg.loss.method == "cmac")

    @torch.no_grad()
    def embed(self, video: torch.Tensor, spec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Clips ``[N, 3, T, S, S]`` (uint8, or already normalised float), ``[N, 1, F, C]``
        -> (as ``table.VECTORS``) L2-normalised embeddings ``z_v, z_a`` ``[N, D]`` and the pooled
        backbone features before the heads ``f_v, f_a`` ``[N, C]`` (for linear probes)."""
        if video.dtype == torch.uint8:
            video = finish_video(video)
        feats = self.model(video, spec)
        f_v, f_a = self.model.pool(feats, attention=self.attention)
        return self.model.video_head(f_v), self.model.audio_head(f_a), f_v, f_a


def model_of(ckpt: dict, path: str | Path, device: torch.device, *, clips: int = 1):
    """``(cfg, model)`` of a checkpoint, on the CPU. Its config is validated and its model
    built first on the meta device, where nothing is allocated: weights that are not that
    model's, or a model and ``clips`` clips of its data config that together are larger
    than the memory free (``checkpoint.check_fits``), are refused in one line before the
    real model is built."""
    try:
        cfg = PretrainConfig.from_dict(ckpt.get("config"))
    except ConfigError as e:
        raise checkpoint.CheckpointError(f"{path}: its config is not valid ({e})") from e
    except Exception as e:  # not a dict of sections, wrong types
        why = checkpoint.first_line(f"{type(e).__name__}: {e}")
        raise checkpoint.CheckpointError(
            f"{path}: its config is not a cmac_core config ({why})"
        ) from e
    arch = ckpt.get("arch")
    if arch not in REGISTRY:
        raise checkpoint.CheckpointError(
            f"{path}: unknown architecture {checkpoint.first_line(repr(arch), 60)}; known: {sorted(REGISTRY)}"
        )
    with torch.device("meta"):
        shape_only = build(arch, cfg.model)
    checkpoint.check_fits(shape_only, path, device, data=cfg.data, clips=clips)
    checkpoint.check_state_dict(shape_only, ckpt.get("model"), path)
    model = build(arch, cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError) as e:  # same shapes, but e.g. complex numbers
        why = checkpoint.first_line(str(e))
        raise checkpoint.CheckpointError(f"{path}: its weights do not load ({why})") from e
    return cfg, model
