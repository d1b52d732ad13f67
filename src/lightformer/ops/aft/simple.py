"""AFT-simple fast path (Zhai et al. 2021, "An Attention Free Transformer", Eq. 5), O(T·C) time and memory.

    Y_t = σ(Q_t) ⊙ Σ_t' softmax_t'(K)_t' ⊙ V_t'                     (w = 0; t' <= t when causal)

Bidirectional: one weighted sum per channel. Causal: prefix sums of e^{K}·V and e^{K}, computed chunk by chunk
(``causal_prefix``) with a running maximum as the stabiliser, so no exponent is ever positive (no overflow):
chunk c (positions ``[c·L, (c+1)·L)``) uses M_c = max of K over positions < (c+1)·L (the running max at the
chunk's end); inside a chunk the sums are ``cumsum``s, and the totals of earlier chunks are carried over with a
loop over the ``T / L`` chunks, rescaled by e^{M_{c−1} − M_c} <= 1. Because M_c also covers the chunk's own later
positions, an early position's sums would underflow only if K rose by more than ~80 (float32) within one chunk.
Same semantics as ``naive.aft_simple``. Dtypes: the sums run in float32 (float64 for float64 inputs); the
output has the dtype of ``q``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


def stat_dtype(x: Tensor) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mask_keys(k: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """Padded keys get K = −∞, i.e. weight e^{−∞} = 0 everywhere. ``[B, T, C]``."""
    return k if key_padding_mask is None else k.masked_fill(~key_padding_mask[..., None], float("-inf"))


def finite_or_zero(m: Tensor) -> Tensor:
    """A stabiliser: −∞ (no real key yet) becomes 0; detached, since it cancels between numerator and denominator."""
    return torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device)).detach()


def default_chunk(t: int) -> int:
    """Chunk length L ~ sqrt(T), a power of two in [32, 256]: balances the cumsum width against the carry loop."""
    return int(min(256, max(32, 2 ** math.ceil(math.log2(max(1.0, math.sqrt(t)))))))


def causal_prefix(k: Tensor, v: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stabilised causal prefix sums.

    Args:
        k: ``[B, T, C]`` keys (−∞ at padded keys), v: ``[B, T, C]``, both in the accumulation dtype.
        chunk: chunk length L.
    Returns:
        x: ``[B, nb, L, 2C]`` the terms [e^{K − M_c} V, e^{K − M_c}] themselves;
        nd: ``[B, nb, L, 2C]`` (nb = ceil(T / L), zero-padded tail), numerator then denominator:
        nd[t, :C] = Σ_{t'<=t} e^{K_t' − M_c} V_t' and nd[t, C:] = Σ_{t'<=t} e^{K_t' − M_c}, c = t // L;
        M: ``[B, nb, C]`` the stabiliser of each chunk.
    """
    b, t, c = k.shape
    nb = -(-t // chunk)
    pad = nb * chunk - t
    if pad:
        k = F.pad(k, (0, 0, 0, pad), value=float("-inf"))
        v = F.pad(v, (0, 0, 0, pad))
    kc = k.view(b, nb, chunk, c)
    m = finite_or_zero(kc.amax(dim=2).cummax(dim=1).values)  # [B, nb, C], non-decreasing
    e = torch.exp(kc - m[:, :, None])  # [B, nb, L, C], <= 1
    x = torch.cat([e * v.view(b, nb, chunk, c), e], dim=-1)  # [B, nb, L, 2C]
    nd = torch.cumsum(x, dim=2)
    if nb > 1:
        decay = torch.exp(m[:, :-1] - m[:, 1:]).repeat(1, 1, 2)  # [B, nb-1, 2C], <= 1
        tot = x.sum(dim=2)  # [B, nb, 2C] (not a slice of nd: its backward would zero-fill all of nd)
        carry = [torch.zeros_like(tot[:, 0])]
        for i in range(nb - 1):  # over chunks, not tokens: T / L iterations on [B, 2C] tensors
            carry.append((carry[-1] + tot[:, i]) * decay[:, i])
        nd = nd + torch.stack(carry, dim=1)[:, :, None]
    return x, nd, m


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den = 0 (a query that sees no key: num = 0 there too); the clamp, unlike a division by
    0, leaves no NaN in the gradients. Only a subnormal denominator (complete underflow) is changed."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def ratio_of_halves(nd: Tensor) -> Tensor:
    """``[..., 2C]`` (numerator | denominator) -> ``[..., C]`` ratio; ``unbind`` rather than two slices, whose
    backward would zero-fill and copy the whole tensor twice."""
    num, den = nd.unflatten(-1, (2, nd.shape[-1] // 2)).unbind(-2)
    return safe_ratio(num, den)


def first_rows(y: Tensor, t: int) -> Tensor:
    """``[B, nb, L, C]`` -> ``[B, T, C]`` (drops the padded tail; no slice op when there is none)."""
    y = y.flatten(1, 2)
    return y if y.shape[1] == t else y[:, :t]


def aft_simple(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
               chunk: int | None = None) -> Tensor:
    """AFT-simple: q, k, v ``[B, T, C]`` -> ``[B, T, C]``; O(T·C). ``chunk``: causal chunk length (default
    ``default_chunk(T)``)."""
    b, t, c = q.shape
    sd = stat_dtype(q)
    kf = mask_keys(k.to(sd), key_padding_mask)
    vf = v.to(sd)
    if causal:
        _, nd, _ = causal_prefix(kf, vf, chunk or default_chunk(t))
        y = first_rows(ratio_of_halves(nd), t)  # [B, T, C]
    else:
        m = finite_or_zero(kf.amax(dim=1, keepdim=True))  # [B, 1, C]
        e = torch.exp(kf - m)  # [B, T, C]
        y = safe_ratio((e * vf).sum(dim=1, keepdim=True), e.sum(dim=1, keepdim=True))  # [B, 1, C]
    return (torch.sigmoid(q.to(sd)) * y).to(q.dtype)


def aft_simple_step(q: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor, Tensor]
                    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One causal decoding step: q, k, v ``[B, C]``; state (running max m, numerator n, denominator z), each
    ``[B, C]`` in the accumulation dtype (m starts at −∞, n and z at 0). Same recurrence as
    ``naive.aft_simple_recurrent``."""
    m, n, z = state
    sd = m.dtype
    kf, vf = k.to(sd), v.to(sd)
    m_new = torch.maximum(m, kf)
    decay = torch.exp(m - m_new)  # e^{−∞} = 0 on the first step
    e = torch.exp(kf - m_new)
    n = n * decay + e * vf
    z = z * decay + e
    y = torch.sigmoid(q.to(sd)) * n / z
    return y.to(q.dtype), (m_new, n, z)
