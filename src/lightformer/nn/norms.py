"""RMSNorm (Zhang & Sennrich 2019, Eq. 4), used inside mixers and registered as the ``rmsnorm`` norm
(``blocks/norms/``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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

