"""One token of the selective scan (decoding): the recurrence of ``naive`` for a single step."""

from __future__ import annotations

import torch
from torch import Tensor


def selective_scan_step(u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, D: Tensor | None,
                        h: Tensor) -> tuple[Tensor, Tensor]:
    """``u_t, delta_t [B, E]``, ``A [E, N]``, ``B_t, C_t [B, N]``, ``D [E]`` or None, ``h [B, E, N]`` (float32 or
    float64) -> ``(y_t [B, E] in the dtype of u_t, new h [B, E, N] in the dtype of h)``; ``h`` is not modified.

        h' = exp(Δ_t ⊗ A) ⊙ h + (Δ_t u_t) ⊗ B_t,     y_t = h' C_t + D ⊙ u_t
    """
    acc = h.dtype
    u, dt = u_t.to(acc), delta_t.to(acc)
    h = torch.exp(dt[:, :, None] * A.to(acc)) * h + (dt * u)[:, :, None] * B_t.to(acc)[:, None, :]
    y = (h @ C_t.to(acc)[:, :, None])[:, :, 0]
    if D is not None:
        y = y + D.to(acc) * u
    return y.to(u_t.dtype), h
