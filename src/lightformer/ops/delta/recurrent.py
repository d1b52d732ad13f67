"""One step of the (gated) delta rule, for decoding (``naive`` has the equations and conventions):

    S̃ = α_t S_{t−1},   v'_t = β_t (v_t − S̃ᵀ k_t),   S_t = S̃ + k_t v'_tᵀ,   o_t = S_tᵀ (scale · q_t)

O(d_k·d_v) per token and head whatever the position; state ``S: [B, H, d_k, d_v]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def delta_rule_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, s: Tensor, *,
                    scale: float) -> tuple[Tensor, Tensor]:
    """q, k ``[B, H, d_k]``, v ``[B, H, d_v]``, beta and g (log α, or None) ``[B, H]``, state s ``[B, H, d_k, d_v]``
    -> (o ``[B, H, d_v]``, new state). Computes in the dtype of the state (float32, float64 for float64) and
    returns o in it too; ``s`` is not modified."""
    acc = s.dtype
    q, k, v, beta = q.to(acc), k.to(acc), v.to(acc), beta.to(acc)
    if g is not None:
        s = s * g.to(acc).exp()[..., None, None]
    pred = torch.einsum("bhkv,bhk->bhv", s, k)
    v_new = beta[..., None] * (v - pred)
    s = s + k[..., :, None] * v_new[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", s, q * scale), s
