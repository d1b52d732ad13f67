"""``rmsnorm``: Root Mean Square Layer Normalization (Zhang & Sennrich 2019, Eq. 4): ``x / sqrt(mean(x²) + eps) · g``.
The computation lives in ``nn/norms.py`` because mixers use it inside themselves too."""

from __future__ import annotations

from dataclasses import dataclass

from ...nn.norms import RMSNorm as _RMSNorm
from ..base import NORMS, NormConfig


@dataclass(frozen=True)
class RMSNormConfig(NormConfig):
    """``eps`` defaults to 1e-6 (the value the model has always used)."""

    eps: float = 1e-6


@NORMS.register("rmsnorm")
class RMSNorm(_RMSNorm):
    """RMSNorm with a frozen config; x ``[..., D]`` -> same shape and dtype."""

    config_class = RMSNormConfig

    def __init__(self, config: RMSNormConfig) -> None:
        super().__init__(config.dim, eps=config.eps)
        self.config = config
