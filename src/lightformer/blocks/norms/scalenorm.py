"""``scalenorm``: ScaleNorm (Nguyen & Salazar 2019, "Transformers without Tears", Eq. 6):
``g · x / max(||x||₂, eps)`` with one learned scalar g per norm, initialised to sqrt(D)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..base import NORMS, NormConfig


@NORMS.register("scalenorm")
class ScaleNorm(nn.Module):
    """x ``[..., D]`` -> same shape and dtype; the norm is computed in fp32 (or wider, for float64 inputs)."""

    config_class = NormConfig

    def __init__(self, config: NormConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.tensor(math.sqrt(config.dim)))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp_min(self.config.eps)
        return (self.scale.to(xf.dtype) * xf / norm).to(x.dtype)
