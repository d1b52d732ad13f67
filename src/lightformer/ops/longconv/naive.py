"""Oracles of the long-convolution (LTI) mixers, written for reading: the explicit causal convolution (O(T²)) and,
where the mixer has a finite state, its recurrence (a Python loop over T). Float64-safe.

Layout (shared with ``fft``): sequence last. ``u: [..., C, T]`` (C channels), a kernel ``k: [..., L]`` broadcastable
against u's channel dimensions; outputs ``[..., C, T]``.

    causal_conv     y_t = Σ_(0 <= t−s < L) k_(t−s) · u_s                                   (zeros before the start)
    diag_ssm        x_t = Ā ⊙ x_(t−1) + B̄ ⊙ u_t,  y_t = 2·Re Σ_n C_n x_(t,n)   (S4D, H3: complex diagonal Ā = exp(ΔA))
    lti_memory      m_t = Ā m_(t−1) + B̄ u_t                                      (LMU: dense [d, d] Ā, memory m ∈ ℝ^d)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import cexp


def causal_conv(u: Tensor, k: Tensor) -> Tensor:
    """The explicit causal convolution y_t = Σ_(s <= t, t−s < L) k_(t−s) u_s as a [T, T] Toeplitz product.

    Args:
        u: ``[..., C, T]``; k: ``[..., L]`` broadcastable against ``u[..., :, 0]`` (e.g. ``[C, L]``).
    Returns:
        ``[..., C, T]`` (broadcast shape) in the promoted dtype.
    """
    t = u.shape[-1]
    lag = torch.arange(t, device=u.device)[:, None] - torch.arange(t, device=u.device)[None, :]  # [T, T]: t − s
    valid = (lag >= 0) & (lag < k.shape[-1])
    kk = torch.nn.functional.pad(k, (0, max(0, t - k.shape[-1])))
    toeplitz = kk[..., lag.clamp(0, t - 1)] * valid  # [..., T, T]
    return (toeplitz @ u[..., None]).squeeze(-1)


def diag_ssm(u: Tensor, dtA: Tensor, b_bar: Tensor, c: Tensor, *, initial_state: Tensor | None = None,
             output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """The diagonal state-space recurrence of S4D (Gu, Gupta, Goel, Ré 2022, Eq. 1 with ZOH), one token at a time:

        x_t = exp(ΔA) ⊙ x_(t−1) + B̄ ⊙ u_t,     y_t = 2·Re(Σ_n C_n · x_(t,n))

    (N complex modes stand for the 2N of the real system: the conjugate half is the 2·Re.)

    Args:
        u: ``[..., C, T]`` real input.
        dtA: ``[C, N]`` complex Δ·A; b_bar: ``[C, N]`` complex B̄; c: ``[C, N]`` complex C.
        initial_state: ``[..., C, N]`` complex x_0 (None = zeros).
        output_final_state: also return x_T.
    Returns:
        ``(y [..., C, T] real, x_T [..., C, N] complex or None)``.
    """
    da = cexp(dtA)
    x = initial_state
    if x is None:
        x = torch.zeros(*u.shape[:-1], dtA.shape[-1], dtype=dtA.dtype, device=u.device)
    ys = []
    for t in range(u.shape[-1]):
        x = da * x + b_bar * u[..., t, None]
        ys.append(2.0 * (c * x).sum(-1).real)
    return torch.stack(ys, dim=-1), (x if output_final_state else None)


def lti_memory(u: Tensor, ab: Tensor, bb: Tensor, *, initial_state: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """The LMU memory (Voelker et al. 2019, Eq. 3-4, ZOH at dt = 1), one token at a time: m_t = Ā m_(t−1) + B̄ u_t.

    Args:
        u: ``[B, M, T]`` (M = memory_d scalar inputs, each with its own memory); ab: ``[d, d]`` Ā; bb: ``[d]`` B̄.
        initial_state: ``[B, M, d]`` m_0 (None = zeros).
    Returns:
        ``(m [B, M, d, T], m_T [B, M, d])``.
    """
    m = initial_state
    if m is None:
        m = torch.zeros(*u.shape[:-1], ab.shape[0], dtype=ab.dtype, device=u.device)
    ms = []
    for t in range(u.shape[-1]):
        m = m @ ab.mT + u[..., t, None] * bb
        ms.append(m)
    return torch.stack(ms, dim=-1), m
