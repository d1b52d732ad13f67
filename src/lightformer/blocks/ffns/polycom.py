"""Polynomial composition activations (Zhuo et al. 2024, "Polynomial Composition Activations: Unleashing the
Dynamics of Large Language Models", Eqs. 3-4), in the ``mlp`` FFN ``W2 · act(W1 x)``:

- ``polyrelu``: ``PolyReLU(x) = Σ_{i=0..r} a_i · ReLU(x)^i``;
- ``polynorm``: ``PolyNorm(x) = Σ_{i=1..r} a_i · x^i / ||x^i|| + a_0``, with ``||·||`` the RMS normalisation over
  the hidden features (so the powers do not blow up).

Order ``r = 3`` (the paper's), learned coefficients shared by the layer's features, initialised to ``a_i = 1/r`` for
i >= 1 and ``a_0 = 0``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FFN, FFNS, FFNConfig


@dataclass(frozen=True)
class PolyConfig(FFNConfig):
    """``order``: r, the highest power (>= 1); ``eps``: of PolyNorm's RMS normalisation."""

    order: int = 3
    eps: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order < 1:
            raise ValueError(f"order must be >= 1, got {self.order!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")


class PolyFFN(FFN):
    """x ``[..., D]`` -> ``[..., D]``; ``coeffs`` ``[r + 1]`` (a_0 .. a_r), exempt from weight decay."""

    config_class = PolyConfig

    def __init__(self, config: PolyConfig) -> None:
        super().__init__(config)
        hidden = self.hidden(config)
        self.fc1 = nn.Linear(config.dim, hidden, bias=config.bias)
        self.fc2 = nn.Linear(hidden, config.dim, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        self.coeffs = nn.Parameter(torch.empty(config.order + 1))
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        with torch.no_grad():
            self.coeffs.fill_(1.0 / self.config.order)
            self.coeffs[0] = 0.0

    def activation(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.activation(self.fc1(x))))


@FFNS.register("polyrelu")
class PolyReLU(PolyFFN):
    """``Σ_{i=0..r} a_i · ReLU(h)^i`` (Zhuo et al. 2024, Eq. 3)."""

    def activation(self, h: Tensor) -> Tensor:
        r = F.relu(h)
        a = self.coeffs.to(h.dtype)
        out = a[0] + a[1] * r
        power = r
        for i in range(2, self.config.order + 1):
            power = power * r
            out = out + a[i] * power
        return out


@FFNS.register("polynorm")
class PolyNorm(PolyFFN):
    """``Σ_{i=1..r} a_i · rms_norm(h^i) + a_0`` (Zhuo et al. 2024, Eq. 4), statistics in fp32 or wider."""

    def activation(self, h: Tensor) -> Tensor:
        hf = h.to(torch.promote_types(h.dtype, torch.float32))
        a = self.coeffs.to(hf.dtype)
        out = a[0] + torch.zeros_like(hf)
        power = torch.ones_like(hf)
        for i in range(1, self.config.order + 1):
            power = power * hf
            out = out + a[i] * power * torch.rsqrt(power.pow(2).mean(-1, keepdim=True) + self.config.eps)
        return out.to(h.dtype)
