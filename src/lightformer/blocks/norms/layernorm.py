"""``layernorm``: Layer Normalization (Ba, Kiros & Hinton 2016, Eq. 4): ``(x - mean) / sqrt(var + eps) · g + b``."""

from __future__ import annotations

from torch import nn

from ..base import NORMS, NormConfig


@NORMS.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm(dim, eps)`` with a frozen config; x ``[..., D]`` -> same shape and dtype."""

    config_class = NormConfig

    def __init__(self, config: NormConfig) -> None:
        super().__init__(config.dim, eps=config.eps)
        self.config = config
