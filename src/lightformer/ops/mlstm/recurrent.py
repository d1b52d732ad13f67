"""One step of the stabilised mLSTM recurrence, for decoding (Beck et al. 2024, "xLSTM: Extended Long Short-Term
Memory", arXiv 2405.04517, Sec. 2.3, Eq. 19-27, and the stabilisation of App. A):

    m_t = max(log f_t + m_{t−1}, ĩ_t),   f'_t = exp(log f_t + m_{t−1} − m_t),   i'_t = exp(ĩ_t − m_t)
    C'_t = f'_t C'_{t−1} + i'_t k_t v_tᵀ,   n'_t = f'_t n'_{t−1} + i'_t k_t
    h_t = C'_tᵀ q_t / max(|n'_t·q_t|, exp(−m_t))

with log f_t = logsigmoid(f̃_t). The stored (C', n', m) stand for the unstabilised C = C' e^m, n = n' e^m, so
h_t equals C_tᵀq_t / max(|n_t·q_t|, 1) exactly (the max-stabiliser only rescales numerator and denominator
together). C is stored ``[d_k, d_v]`` (Σ k vᵀ), as xlstm's ``c_state``; the read-out is qᵀC. O(d²) per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normaliser(den: Tensor, m: Tensor) -> Tensor:
    """max(|n'·q|, exp(−m)) (the stabilised max(|n·q|, 1)), floored at the smallest normal number so that an
    exp(−m) that underflows (m > 87 in float32, i.e. ĩ > 87) together with n'·q = 0 cannot divide by zero."""
    return torch.maximum(den.abs(), torch.exp(-m)).clamp_min(torch.finfo(den.dtype).tiny)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, c: Tensor, n: Tensor,
               m: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One token: q, k, v ``[B, H, d]``, i_pre, f_pre ``[B, H]`` (gate pre-activations ĩ, f̃), state c ``[B, H, d, d]``,
    n ``[B, H, d]``, m ``[B, H]`` -> (h ``[B, H, d]``, (c, n, m)), all in the dtype of the state. Nothing is
    modified in place."""
    acc = c.dtype
    q, k, v, i_pre, f_pre = (x.to(acc) for x in (q, k, v, i_pre, f_pre))
    log_f = F.logsigmoid(f_pre)
    m_new = torch.maximum(log_f + m, i_pre)
    f_act = torch.exp(log_f + m - m_new)[..., None]  # [B, H, 1]
    i_act = torch.exp(i_pre - m_new)[..., None]
    c = f_act[..., None] * c + (i_act * k)[..., :, None] * v[..., None, :]
    n = f_act * n + i_act * k
    num = torch.einsum("bhk,bhkv->bhv", q, c)
    den = (q * n).sum(-1, keepdim=True)
    return num / normaliser(den, m_new[..., None]), (c, n, m_new)
