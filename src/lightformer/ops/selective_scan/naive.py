"""The selective scan written for reading: a Python loop over T (the oracle of ``chunked``).

Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752,
Sec. 3.2, Algorithm 2; discretisation Eq. 4 with zero-order hold for A and Euler for B, as in the reference code):
for every channel e < E and state index n < N,

    h_t[e, n] = exp(Δ_t[e] · A[e, n]) · h_{t−1}[e, n] + Δ_t[e] · B_t[n] · u_t[e]
    y_t[e]    = Σ_n C_t[n] · h_t[e, n] + D[e] · u_t[e]

with h_0 the initial state (zeros by default). Δ > 0 and A < 0 make every decay exp(Δ·A) lie in (0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the state and of the scan's arithmetic: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, *,
                   initial_state: Tensor | None = None, output_final_state: bool = False
                   ) -> tuple[Tensor, Tensor | None]:
    """The recurrence above, one token at a time.

    Args:
        u: ``[B, T, E]`` input; delta: ``[B, T, E]`` step sizes Δ (after softplus, >= 0).
        A: ``[E, N]`` (negative for a decaying state); B, C: ``[B, T, N]`` input-dependent projections.
        D: optional ``[E]`` skip weight.
        initial_state: optional ``[B, E, N]`` h_0 (None = zeros).
        output_final_state: also return h_T.

    Returns:
        ``(y [B, T, E] in the dtype of u, h_T [B, E, N] or None)``; the arithmetic and h_T are float32 (float64 for
        float64 inputs).
    """
    acc = state_dtype(u.dtype)
    b, t, e = u.shape
    n = A.shape[-1]
    u_, dt, a_, b_, c_ = (x.to(acc) for x in (u, delta, A, B, C))
    h = torch.zeros(b, e, n, dtype=acc, device=u.device) if initial_state is None else initial_state.to(acc)
    ys = []
    for i in range(t):
        decay = torch.exp(dt[:, i, :, None] * a_)  # [B, E, N]
        h = decay * h + (dt[:, i] * u_[:, i])[:, :, None] * b_[:, i, None, :]
        ys.append((h * c_[:, i, None, :]).sum(-1))  # [B, E]
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.to(acc) * u_
    return y.to(u.dtype), (h if output_final_state else None)
