"""One decoding step of gated (vector-decay) linear attention (GLA / RWKV-6, conventions in ``ops.gla.naive``):

    GLA:     S_t = Diag(exp(g_t)) S_{t−1} + k_t v_tᵀ,   o_t = S_tᵀ (scale · q_t)
    RWKV-6:  o_t = (S_{t−1} + Diag(u) k_t v_tᵀ)ᵀ (scale · r_t),   then S_t as above

O(d_k·d_v) per token and head, whatever the position: the state is ``S [B, H, d_k, d_v]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gla_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, *, scale: float = 1.0,
             u: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """q, k, g ``[B, H, d_k]``, v ``[B, H, d_v]``, state ``[B, H, d_k, d_v]``, u ``[H, d_k]`` or None ->
    (o ``[B, H, d_v]`` in the state's dtype, new state). Computes in the state's dtype; ``state`` is not modified."""
    acc = state.dtype
    q, k, v, g = q.to(acc) * scale, k.to(acc), v.to(acc), g.to(acc)
    kv = k[..., :, None] * v[..., None, :]  # [B, H, d_k, d_v]
    new = g.exp()[..., None] * state + kv
    if u is None:
        return torch.einsum("bhk,bhkv->bhv", q, new), new
    return torch.einsum("bhk,bhkv->bhv", q, state + u.to(acc)[..., None] * kv), new
