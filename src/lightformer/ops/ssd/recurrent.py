"""One step of the SSD recurrence, for decoding (Dao & Gu 2024, Eq. 1-2 with scalar A; Sun et al. 2023, Eq. 1-2):

    S_t = exp(g_t) · S_{t−1} + k_t v_tᵀ,        o_t = S_tᵀ q_t

O(d_k·d_v) per head and token whatever the position; state ``[B, H, d_k, d_v]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .naive import expand_groups


def ssd_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """q, k ``[B, Hk, d_k]``, v ``[B, H, d_v]``, g ``[B, H]``, state ``[B, H, d_k, d_v]`` -> (o ``[B, H, d_v]``,
    new state). Computes in the state's dtype (float32, float64 for float64); o has that dtype. ``state`` is not
    modified."""
    acc = state.dtype
    h = v.shape[1]
    q, k = expand_groups(q, h).to(acc), expand_groups(k, h).to(acc)
    s = torch.addcmul(g.to(acc).exp()[..., None, None] * state, k[..., :, None], v.to(acc)[..., None, :])
    return torch.einsum("bhk,bhkv->bhv", q, s), s
