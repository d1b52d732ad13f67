"""Normalisation layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019, Eq. 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x²) + eps) · g``; x ``[..., D]`` -> same shape and dtype (statistics in fp32, or in the
    input's precision when it is wider, so float64 oracle checks stay float64)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    """``"layernorm"`` -> ``nn.LayerNorm(dim)``, ``"rmsnorm"`` -> ``RMSNorm(dim)``; ValueError naming ``norm``."""
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
