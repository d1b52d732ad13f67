"""The recurrence oracle of gated (vector-decay) linear attention, written for reading: a Python loop over tokens.

State recurrence shared by GLA and RWKV-6 (per head; k, q ``[d_k]``, v ``[d_v]``, S ``[d_k, d_v]``):

    S_t = Diag(α_t) S_{t−1} + k_t v_tᵀ,        α_t = exp(g_t) ∈ (0, 1]^{d_k}   (g_t = log-decay <= 0)

Outputs:
  * GLA (Yang, Wang, Shen, Panda, Kim 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training",
    arXiv 2312.06635, Eq. 3 / Sec. 4.1):   o_t = S_tᵀ (scale · q_t)            (``u=None``, inclusive: the current
    token is decayed into the state first, then read).
  * RWKV-6 (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence",
    arXiv 2404.05892, Sec. 4, the wkv_t of Eq. 19-20):  o_t = (S_{t−1} + Diag(u) k_t v_tᵀ)ᵀ (scale · r_t)
    (``u`` given, ``[H, d_k]``: the "bonus" u replaces the current token's decay; the read is *exclusive*: the
    current token's decay α_t only acts on later tokens).

Conventions of the family (fla's ``naive_recurrent_gla`` / ``naive_recurrent_rwkv6`` layout):
    q, k ``[B, H, T, d_k]``, v ``[B, H, T, d_v]``, g ``[B, H, T, d_k]`` log-decays (<= 0), u ``[H, d_k]`` or None,
    initial_state S_0 ``[B, H, d_k, d_v]`` (None = zeros). Returns (o ``[B, H, T, d_v]``, S_T or None). The state
    is float32 (float64 for float64 inputs) whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def recurrent_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float = 1.0, u: Tensor | None = None,
                  initial_state: Tensor | None = None, output_final_state: bool = False
                  ) -> tuple[Tensor, Tensor | None]:
    """The recurrence above, one token at a time, in float32/float64 (see the module docstring for shapes).

    ``u=None`` is GLA's inclusive read o_t = S_tᵀ q_t; a ``u [H, d_k]`` is RWKV-6's o_t = (S_{t−1} + Diag(u) k_t
    v_tᵀ)ᵀ r_t. Output in the dtype of ``v``; the final state (when ``output_final_state``) float32/64."""
    acc = _acc(v.dtype)
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    s = q.new_zeros(b, h, dk, dv, dtype=acc) if initial_state is None else initial_state.to(acc)
    q, k, v, g = q.to(acc) * scale, k.to(acc), v.to(acc), g.to(acc)
    outs = []
    for i in range(t):
        kv = k[:, :, i, :, None] * v[:, :, i, None, :]  # k_t v_tᵀ, [B, H, d_k, d_v]
        decay = g[:, :, i].exp()[..., None]  # α_t, [B, H, d_k, 1]
        if u is None:
            s = decay * s + kv  # S_t
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i], s))
        else:
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i], s + u.to(acc)[None, :, :, None] * kv))
            s = decay * s + kv
    return torch.stack(outs, dim=2).to(v.dtype), (s if output_final_state else None)
