"""Initialisers shared by the selective state-space mixers (Mamba, Mamba-2, Gated DeltaNet).

The time step Δ = softplus(W x + dt_bias) starts log-uniform in [dt_min, dt_max] (Gu & Dao 2023, Sec. 3.6 and the
reference ``mamba_ssm``; Dao & Gu 2024 and Yang et al. 2025 keep it): dt ~ exp(U(log dt_min, log dt_max)), floored
at ``floor``, and dt_bias = softplus⁻¹(dt) = dt + log(1 − exp(−dt)), written with ``expm1`` so it stays exact for
small dt.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def dt_bias_(bias: Tensor, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Fill ``bias`` (any shape) in place with softplus⁻¹ of dt ~ log-uniform [dt_min, dt_max], dt >= floor.

    Raises:
        ValueError: unless 0 < dt_min <= dt_max and floor >= 0 (naming them).
    """
    if not 0 < dt_min <= dt_max or floor < 0:
        raise ValueError(f"need 0 < dt_min <= dt_max and floor >= 0, got dt_min={dt_min!r}, dt_max={dt_max!r}, "
                         f"floor={floor!r}")
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(bias.shape, dtype=torch.float64) * (hi - lo) + lo).clamp_(min=floor)
    return bias.copy_(dt + torch.log(-torch.expm1(-dt)))
