"""Oracles of linear attention with a per-head scalar decay (the SSD family), written for reading.

The recurrence (Mamba-2: Dao & Gu 2024, "Transformers are SSMs", Eq. 1-2 with a scalar A_t per head, Sec. 3-4;
RetNet: Sun et al. 2023, "Retentive Network", Eq. 1-2 with a constant γ per head):

    S_t = exp(g_t) · S_{t−1} + k_t v_tᵀ,        o_t = S_tᵀ q_t                       (S_t: [d_k, d_v])

and its quadratic ("parallel", attention-like) form (Dao & Gu 2024, Eq. 16, the 1-semiseparable mask L; RetNet
Eq. 5, the decay matrix D):

    O = (Q Kᵀ ⊙ L) V,     L_ts = exp(Σ_{s<r<=t} g_r) for s <= t, else 0          (L = exp(segsum(g)))

plus the term exp(Σ_{r<=t} g_r) · S_0ᵀ q_t of an initial state S_0. g_t <= 0 is the log-decay (Mamba-2:
g_t = Δ_t·A_h; RetNet: g_t = log γ_h for every t).

Conventions shared by the ops of this family:
    q, k: ``[B, Hk, T, d_k]``; v: ``[B, H, T, d_v]`` with H a multiple of Hk (head h reads q, k of group
    h // (H / Hk), Mamba-2's ``ngroups``); g: ``[B, H, T]``; state ``[B, H, d_k, d_v]``; output ``[B, H, T, d_v]``.
    Nothing is scaled here: a 1/sqrt(d_k) belongs to the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .segsum import segsum


def expand_groups(x: Tensor, heads: int) -> Tensor:
    """``[B, Hk, ...] -> [B, H, ...]``: head h reads group h // (H / Hk). Raises ValueError if Hk ∤ H."""
    hk = x.shape[1]
    if heads % hk:
        raise ValueError(f"heads of v ({heads}) must be a multiple of the heads of q and k ({hk})")
    return x if hk == heads else x.repeat_interleave(heads // hk, dim=1)


def recurrent_ssd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, initial_state: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """The recurrence, one token at a time, from ``initial_state`` ``[B, H, d_k, d_v]`` (None = zeros).

    Returns ``(o [B, H, T, d_v], S_T [B, H, d_k, d_v])`` in the dtype of the inputs (run it in float64 for a
    reference). O(T·d_k·d_v) but a Python loop over T: an oracle, not a fast path."""
    b, h, t, dv = v.shape
    q, k = expand_groups(q, h), expand_groups(k, h)
    s = q.new_zeros(b, h, q.shape[-1], dv) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for i in range(t):
        s = g[:, :, i, None, None].exp() * s + k[:, :, i, :, None] * v[:, :, i, None, :]  # S_t
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i], s))  # o_t = S_tᵀ q_t
    return torch.stack(outs, dim=2), s


def parallel_ssd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, initial_state: Tensor | None = None) -> Tensor:
    """The quadratic form O = (Q Kᵀ ⊙ L) V (+ the initial state's term), materialising the ``[B, H, T, T]`` mask.

    RetNet's parallel retention (Sun et al. 2023, Eq. 5) with constant g = log γ; Mamba-2's "attention" form of
    SSD (Dao & Gu 2024, Eq. 16). Returns ``o [B, H, T, d_v]``."""
    h = v.shape[1]
    q, k = expand_groups(q, h), expand_groups(k, h)
    decay = segsum(g).exp()  # L [B, H, T, T], zero above the diagonal
    o = torch.einsum("bhts,bhsv->bhtv", torch.einsum("bhtk,bhsk->bhts", q, k) * decay, v)
    if initial_state is not None:
        o = o + torch.cumsum(g, dim=-1).exp()[..., None] * torch.einsum("bhtk,bhkv->bhtv", q, initial_state)
    return o
