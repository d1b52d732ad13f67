"""Oracles of the Attention Free Transformer (Zhai et al. 2021, "An Attention Free Transformer"), written for
reading: every weight is materialised as a ``[B, T, T, C]`` tensor, O(T²·C).

AFT-full (Eq. 2), per channel c:

    Y_t = σ(Q_t) ⊙ Σ_t' exp(K_t' + w_{t,t'}) ⊙ V_t'  /  Σ_t' exp(K_t' + w_{t,t'})

i.e. for each (t, c) a softmax over t' of the logits K_{t',c} + w_{t,t'} weighting V_{t',c}, gated by σ(Q_{t,c}).
AFT-local (Sec. 3.2): w_{t,t'} is kept for |t − t'| < window and replaced by 0 outside (not by −∞: far tokens
still contribute through exp(K)). AFT-simple (Eq. 5): w = 0, Y = σ(Q) ⊙ Σ_t' softmax_t'(K) ⊙ V.

Conventions shared by the ops of this family:
    q, k, v: ``[B, T, C]`` (C = channels, all heads flattened: AFT mixes per channel, heads play no role);
    output ``[B, T, C]`` in the dtype of ``q``.
    causal: t' <= t only. key_padding_mask ``[B, T]`` bool (True = real key): masked keys are excluded.
    A query that sees no key outputs 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def allowed_keys(t: int, *, causal: bool, key_padding_mask: Tensor | None, device) -> Tensor:
    """Which key t' each query t may use, ``[B or 1, T, T]`` bool."""
    allowed = torch.ones(1, t, t, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=device).tril()
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, :]
    return allowed


def aft_full(q: Tensor, k: Tensor, v: Tensor, w: Tensor, *, causal: bool = False,
             key_padding_mask: Tensor | None = None) -> Tensor:
    """AFT-full, Eq. 2. ``w``: ``[T, T]`` position biases (row t = query, column t' = key)."""
    t = q.shape[1]
    logits = k[:, None, :, :] + w[None, :t, :t, None]  # [B, T(query), T(key), C]
    allowed = allowed_keys(t, causal=causal, key_padding_mask=key_padding_mask, device=q.device)[..., None]
    logits = logits.masked_fill(~allowed, float("-inf"))
    empty = ~allowed.any(dim=2, keepdim=True)  # [B, T, 1, 1]: query that sees nothing
    weights = torch.softmax(logits.masked_fill(empty, 0.0), dim=2).masked_fill(empty, 0.0)
    y = (weights * v[:, None, :, :]).sum(dim=2)  # [B, T, C]
    return (torch.sigmoid(q) * y).to(q.dtype)


def band_to_dense(w_band: Tensor, t: int, window: int) -> Tensor:
    """AFT-local's biases as the dense ``[T, T]`` matrix: ``w[t, t'] = w_band[t, t' − t + window − 1]`` when
    ``|t − t'| < window``, else 0. ``w_band``: ``[>= T, 2·window − 1]`` (column ``δ + window − 1`` holds offset
    δ = t' − t)."""
    rows = torch.arange(t, device=w_band.device)[:, None]
    cols = torch.arange(t, device=w_band.device)[None, :]
    delta = cols - rows
    inside = delta.abs() < window
    idx = (delta + window - 1).clamp(0, 2 * window - 2)
    dense = w_band[:t].gather(1, idx.expand(t, t))
    return torch.where(inside, dense, torch.zeros((), dtype=w_band.dtype, device=w_band.device))


def aft_local(q: Tensor, k: Tensor, v: Tensor, w_band: Tensor, window: int, *, causal: bool = False,
              key_padding_mask: Tensor | None = None) -> Tensor:
    """AFT-local (Sec. 3.2): AFT-full with the biases outside the band |t − t'| < window set to 0."""
    return aft_full(q, k, v, band_to_dense(w_band, q.shape[1], window), causal=causal,
                    key_padding_mask=key_padding_mask)


def aft_simple(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
               key_padding_mask: Tensor | None = None) -> Tensor:
    """AFT-simple, Eq. 5: AFT-full with w = 0."""
    t = q.shape[1]
    return aft_full(q, k, v, torch.zeros(t, t, dtype=q.dtype, device=q.device), causal=causal,
                    key_padding_mask=key_padding_mask)


def aft_simple_recurrent(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal AFT-simple as a loop over tokens, the form the decoder runs (running max m, numerator n, denominator
    z per channel):  m_t = max(m_{t−1}, K_t),  n_t = n_{t−1}·e^{m_{t−1}−m_t} + e^{K_t−m_t}·V_t,
    z_t = z_{t−1}·e^{m_{t−1}−m_t} + e^{K_t−m_t},  Y_t = σ(Q_t) ⊙ n_t / z_t."""
    b, t, c = q.shape
    m = torch.full((b, c), float("-inf"), dtype=q.dtype, device=q.device)
    n = torch.zeros(b, c, dtype=q.dtype, device=q.device)
    z = torch.zeros_like(n)
    out = []
    for i in range(t):
        m_new = torch.maximum(m, k[:, i])
        decay = torch.exp(m - m_new)
        e = torch.exp(k[:, i] - m_new)
        n = n * decay + e * v[:, i]
        z = z * decay + e
        m = m_new
        out.append(torch.sigmoid(q[:, i]) * n / z)
    return torch.stack(out, dim=1)
