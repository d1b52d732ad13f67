"""Split-KV attention for decoding against a long cache (flash-decoding).

A few queries (``Tq`` small, typically 1) attend to a long key/value cache. The keys are cut into chunks of
``split_size``; each chunk yields a *partial* ``(m, l, o)`` — its row max, the sum of ``exp(s − m)`` and the
unnormalised ``Σ exp(s − m)·v`` — independently of the others, and the partials are combined by the associative
``merge_partials``. The chunks are independent work items (parallel over the cache instead of over the single
query) and the merge is a reduction tree.

Sources: Dao, Haziza, Massa, Sizov 2023, "Flash-Decoding for long-context inference" (split-KV + log-sum-exp
rescaling); Sanovar et al. 2024, "Lean Attention: Hardware-Aware Scalable Attention Mechanism for the Decode-Phase
of Transformers", Sec. 3 (softmax re-scaling as an associative reduction over key chunks).

Conventions are those of ``naive.attention`` (see ``ops/softmax/naive.py``): q ``[B, H, Tq, d]``, k/v
``[B, H, Tk, d]``, query i at position ``Tk − Tq + i``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Partial", "partial_attention", "merge_partials", "finalize", "split_kv_attention"]


class Partial(NamedTuple):
    """Softmax-attention partial over a set of keys K, per query row (stat dtype: fp32, or fp64 for fp64 inputs).

    Attributes:
        m: ``[B, H, Tq]`` max biased score over K (``-inf`` if the row sees no key of K).
        l: ``[B, H, Tq]`` ``Σ_{j∈K} exp(s_j − m)`` (0 if none).
        o: ``[B, H, Tq, d]`` ``Σ_{j∈K} exp(s_j − m)·v_j`` (unnormalised).
    """

    m: Tensor
    l: Tensor
    o: Tensor


def _finite(m: Tensor) -> Tensor:
    """``m`` with ``-inf`` replaced by 0, so that ``exp(x − m)`` is never ``exp(-inf + inf)``."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def merge_partials(a: Partial, b: Partial) -> Partial:
    """Combine the partials of two disjoint key sets into the partial of their union.

    With ``m = max(m_a, m_b)``: ``l = l_a·e^{m_a−m} + l_b·e^{m_b−m}`` and ``o = o_a·e^{m_a−m} + o_b·e^{m_b−m}``.

    Associativity: a partial ``(m, l, o)`` stands for the pair of sums ``(L, O) = (l·e^m, o·e^m) =
    (Σ_j e^{s_j}, Σ_j e^{s_j} v_j)``; merging maps to ``(L_a + L_b, O_a + O_b)`` with ``m = max(m_a, m_b)``, and
    both ``+`` and ``max`` are associative and commutative. Hence ``merge(merge(a, b), c)`` and
    ``merge(a, merge(b, c))`` represent the same sums (equal up to floating-point rounding), and the empty
    partial ``(-inf, 0, 0)`` is the identity. The ``max`` keeps every exponent ``<= 0``, so nothing overflows.
    """
    m = torch.maximum(a.m, b.m)
    ms = _finite(m)
    wa, wb = torch.exp(a.m - ms), torch.exp(b.m - ms)  # 0 for an empty side
    return Partial(m, a.l * wa + b.l * wb, a.o * wa[..., None] + b.o * wb[..., None])


def finalize(p: Partial, dtype: torch.dtype) -> Tensor:
    """The attention output ``o / l`` ``[B, H, Tq, d]`` in ``dtype``; rows that saw no key give zeros."""
    l = torch.where(p.l == 0, torch.ones_like(p.l), p.l)
    return (p.o / l[..., None]).to(dtype)


def partial_attention(q: Tensor, k: Tensor, v: Tensor, *, start: int, total: int, causal: bool = True,
                      key_padding_mask: Tensor | None = None, alibi_slopes: Tensor | None = None,
                      scale: float | None = None, bias: Tensor | None = None) -> Partial:
    """The partial of keys ``start .. start + k.shape[2] − 1`` of a cache of ``total`` keys.

    Args:
        q: ``[B, H, Tq, d]`` (queries at positions ``total − Tq + i``); k, v: ``[B, H, n, d]`` the chunk.
        key_padding_mask: ``[B, n]`` bool for the chunk, True = real key.
        alibi_slopes: ``[H]``; scale: default ``1/sqrt(d)``.
        bias: additive score bias of the chunk, broadcastable to ``[B, H, Tq, n]`` (e.g. T5's relative bias).
    """
    tq, n = q.shape[2], k.shape[2]
    sd = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)).to(sd) * scale  # [B, H, Tq, n]; matmul in the input dtype
    pq = torch.arange(total - tq, total, device=q.device)
    pk = torch.arange(start, start + n, device=q.device)
    rel = pk[None, :] - pq[:, None]  # [Tq, n]
    if alibi_slopes is not None:
        s = s - alibi_slopes.to(sd).view(1, -1, 1, 1) * rel.abs().to(sd)
    if bias is not None:
        s = s + bias.to(sd)
    allowed = None
    if causal:
        allowed = (rel <= 0)[None, None]
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        allowed = pad if allowed is None else allowed & pad
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    # the shift cancels exactly in o / l, so it needs no gradient
    m = s.amax(-1).detach()
    p = torch.exp(s - _finite(m)[..., None])
    o = torch.matmul(p.to(v.dtype), v).to(sd) if v.dtype != sd else torch.matmul(p, v)
    return Partial(m, p.sum(-1), o)


def split_kv_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
                       key_padding_mask: Tensor | None = None, alibi_slopes: Tensor | None = None,
                       scale: float | None = None, split_size: int = 2048, bias: Tensor | None = None) -> Tensor:
    """Exact attention of a few queries against a long cache, in chunks of ``split_size`` keys merged exactly.

    Args:
        q: ``[B, H, Tq, d]`` (Tq small; query i at position ``Tk − Tq + i``); k, v: ``[B, H, Tk, d]``. Any float
            dtype; k, v are cast to q's dtype. Scores are computed by a matmul in that dtype, statistics and the
            accumulated output in fp32 (fp64 for fp64 inputs).
        causal: queries see only keys at or before their own position (the decoding case; with ``Tq = 1`` every
            key qualifies). ``False`` lets every query see the whole cache.
        key_padding_mask: ``[B, Tk]`` bool, True = real key.
        alibi_slopes: ``[H]``, adds ``−slope_h·|p_q − p_k|`` (Press et al. 2022).
        scale: default ``1/sqrt(d)``.
        split_size: keys per chunk (> 0).
        bias: additive score bias broadcastable to ``[B, H, Tq, Tk]`` (T5's relative bias for the decoded queries:
            ``O(H·Tq·Tk)``, the size of the scores); sliced per chunk.

    Returns:
        ``[B, H, Tq, d]`` in q's dtype; equal to ``naive.attention(q, k, v, causal=causal, ...)``. Differentiable by
        plain autograd. Memory: ``O(B·H·Tq·split_size)`` per chunk plus one partial per chunk.

    Raises:
        ValueError: if ``split_size <= 0`` or the shapes disagree.
    """
    if split_size <= 0:
        raise ValueError(f"split_size must be positive, got {split_size}")
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"need q [B, H, Tq, d] and k == v [B, H, Tk, d], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_padding_mask must be [B, Tk] = {[k.shape[0], k.shape[2]]}, "
                         f"got {list(key_padding_mask.shape)}")
    k, v = k.to(q.dtype), v.to(q.dtype)
    tk = k.shape[2]
    parts = []
    for start in range(0, tk, split_size):
        end = min(start + split_size, tk)
        mask = None if key_padding_mask is None else key_padding_mask[:, start:end]
        chunk_bias = None if bias is None else bias[..., start:end]
        parts.append(partial_attention(q, k[:, :, start:end], v[:, :, start:end], start=start, total=tk,
                                       causal=causal, key_padding_mask=mask, alibi_slopes=alibi_slopes,
                                       scale=scale, bias=chunk_bias))
    if not parts:  # empty cache: every query sees nothing
        return torch.zeros_like(q)
    # reduction tree over the chunks (any bracketing gives the same result: merge_partials is associative)
    while len(parts) > 1:
        merged = [merge_partials(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            merged.append(parts[-1])
        parts = merged
    return finalize(parts[0], q.dtype)
