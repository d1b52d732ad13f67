"""The mLSTM recurrence written for reading (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", NeurIPS
2024, arXiv 2405.04517, Sec. 2.3 Eq. 19-27, stabilised as in App. A), a Python loop over tokens: the oracle of
``chunked``.

Unstabilised, per head (C is stored ``[d_k, d_v]`` = Σ k vᵀ, as xlstm's ``c_state``, so the paper's C_t q_t is
qᵀC here):

    i_t = exp(ĩ_t),  f_t = σ(f̃_t)   (log f_t = logsigmoid(f̃_t))
    C_t = f_t C_{t−1} + i_t k_t v_tᵀ,   n_t = f_t n_{t−1} + i_t k_t,   h_t = C_tᵀq_t / max(|n_t·q_t|, 1)

exp(ĩ) overflows, so the state is kept as (C', n', m) with C = C' e^m, n = n' e^m and the max-stabiliser

    m_t = max(log f_t + m_{t−1}, ĩ_t),   i'_t = exp(ĩ_t − m_t) <= 1,   f'_t = exp(log f_t + m_{t−1} − m_t) <= 1
    C'_t = f'_t C'_{t−1} + i'_t k_t v_tᵀ,   n'_t = f'_t n'_{t−1} + i'_t k_t
    h_t = C'_tᵀq_t / max(|n'_t·q_t|, exp(−m_t))

Dividing numerator and denominator of the unstabilised h_t by e^{m_t} gives the last line, so h_t is the
unstabilised value whatever m is (the normaliser's lower bound 1 becomes exp(−m_t): this is where the stabiliser
enters). xlstm adds eps = 1e-6 to that stabilised denominator, which makes its output depend on m slightly; this
recurrence does not (it only floors the denominator at the smallest normal number, ``recurrent.normaliser``).

Conventions of the ops of this family:
    q, k, v: ``[B, H, T, d]`` (keys enter as ``scale``·k, xlstm's d^{-1/2}); i_pre, f_pre: ``[B, H, T]`` gate
    pre-activations ĩ, f̃. State ``(C [B, H, d, d], n [B, H, d], m [B, H])``; the empty state is (0, 0, 0) (the
    m_0 of xlstm's step; any m_0 gives the same outputs while C_0 = n_0 = 0). Outputs ``[B, H, T, d]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .recurrent import mlstm_step

MLSTMState = tuple[Tensor, Tensor, Tensor]


def empty_state(b: int, h: int, d: int, *, dtype: torch.dtype, device: torch.device) -> MLSTMState:
    """(C, n, m) = zeros ``[B, H, d, d]``, ``[B, H, d]``, ``[B, H]``."""
    return (torch.zeros(b, h, d, d, dtype=dtype, device=device), torch.zeros(b, h, d, dtype=dtype, device=device),
            torch.zeros(b, h, dtype=dtype, device=device))


def mlstm_recurrent(q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, *, scale: float = 1.0,
                    initial_state: MLSTMState | None = None, output_final_state: bool = False
                    ) -> tuple[Tensor, MLSTMState | None]:
    """The stabilised recurrence, token by token (module docstring), in the dtype of q (run it in float64 for a
    reference). Returns (h ``[B, H, T, d]``, the final (C, n, m) when ``output_final_state`` else None);
    differentiable in every input and in ``initial_state``. Keys enter as ``scale``·k."""
    b, h, t, d = q.shape
    state = initial_state if initial_state is not None else empty_state(b, h, d, dtype=q.dtype, device=q.device)
    state = tuple(s.to(q.dtype) for s in state)
    k = k * scale
    outs = []
    for i in range(t):
        o, state = mlstm_step(q[:, :, i], k[:, :, i], v[:, :, i], i_pre[:, :, i], f_pre[:, :, i], *state)
        outs.append(o)
    return torch.stack(outs, dim=2), (state if output_final_state else None)
