"""Model registry: a checkpoint names its architecture, this builds it."""

from __future__ import annotations

from torch import nn

from cmac_core.config import ModelConfig
from cmac_core.models.cmac import CMACModel
from cmac_core.models.coattention import LLAModel

REGISTRY = {"cmac": CMACModel, "lla": LLAModel}
ARCH_OF_METHOD = {"cmac": "cmac", "avid": "cmac", "lla": "lla"}  # loss.method -> architecture


def build(arch: str, cfg: ModelConfig) -> nn.Module:
    try:
        return REGISTRY[arch](cfg)
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(REGISTRY)}") from None
