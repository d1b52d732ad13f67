"""Oracle for exact softmax attention (Vaswani et al. 2017, "Attention Is All You Need", Eq. 1).

    Attention(Q, K, V) = softmax(Q Kᵀ · scale + bias + mask) V

written for reading: the whole ``[Tq, Tk]`` score matrix is materialised. Every fast path in ``ops/softmax`` and
every exact mixer is tested against this function (run it in float64 for a reference).

Conventions shared by all attention ops:
    q: ``[B, H, Tq, d]``; k, v: ``[B, H, Tk, d]``; output ``[B, H, Tq, d]`` in the dtype of ``q``.
    Query i sits at absolute position ``Tk - Tq + i`` (queries are the *last* Tq positions, as in decoding with a
    cache); key j at position j.
    causal: query at position p sees keys at positions <= p.
    key_padding_mask: ``[B, Tk]`` bool, True = real key; masked keys get weight 0.
    alibi_slopes: ``[H]``; adds ``-slope_h · |p_q - p_k|`` to the scores (ALiBi, Press et al. 2022, "Train Short,
        Test Long", Sec. 3); in the causal case this is ``-slope_h · (p_q - p_k)``.
    bias: any additive score bias broadcastable to ``[B, H, Tq, Tk]`` (e.g. T5's bucketed relative bias from
        ``bias.bucketed_bias``); it is part of the autograd graph, so its gradient is the oracle's.
    A query that sees no key at all outputs zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bias import dense_bias


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
              alibi_slopes: Tensor | None = None, scale: float | None = None,
              window: tuple[int, int] | None = None, bias: Tensor | None = None) -> Tensor:
    """Dense softmax attention, see the module docstring for shapes and conventions.

    Args:
        scale: score scale, default ``1/sqrt(d)``.
        window: optional ``(left, right)`` key window around each query (for the sliding-window oracle).
        bias: optional additive score bias broadcastable to ``[B, H, Tq, Tk]`` (see the module docstring).

    Returns:
        ``[B, H, Tq, d]``, dtype of ``q``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = scores + dense_bias(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask,
                                 alibi_slopes=alibi_slopes, window=window, dtype=scores.dtype, device=q.device)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    # rows that see no key: softmax of all -inf is NaN; define their output as 0
    empty = torch.isinf(scores).all(dim=-1, keepdim=True) & (scores < 0).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v).to(q.dtype)


def log_sum_exp(q: Tensor, k: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
                alibi_slopes: Tensor | None = None, scale: float | None = None,
                window: tuple[int, int] | None = None, bias: Tensor | None = None) -> Tensor:
    """``logsumexp`` of each query's biased scores ``[B, H, Tq]`` (``-inf`` for a query that sees no key);
    what FlashAttention stores for its backward pass. Arguments as in ``attention``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = scores + dense_bias(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask,
                                 alibi_slopes=alibi_slopes, window=window, dtype=scores.dtype, device=q.device)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return torch.logsumexp(scores, dim=-1)


def memory_attention(q: Tensor, k: Tensor, v: Tensor, memory_k: Tensor, memory_v: Tensor, *, causal: bool = False,
                     key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Softmax attention over N persistent memory slots followed by the sequence's keys (Sukhbaatar et al. 2019,
    "Augmenting Self-attention with Persistent Memory", Sec. 4.1, the all-attention layer):

        a = softmax([q·M_kᵀ, q·Kᵀ + bias] · scale),   out = a[:N] · M_v + a[N:] · V

    The memory slots are visible from every query (no causal or padding mask applies to them), so no row is empty.

    Args:
        q: ``[B, H, Tq, d]``; k, v: ``[B, H, Tk, d]`` (conventions of this module: end-aligned queries).
        memory_k, memory_v: ``[H, N, d]`` with N >= 1, shared by every sequence of the batch.
        causal, key_padding_mask: as in ``attention``; they apply to the sequence's keys only.
        scale: default ``1/sqrt(d)``, the same for memory and sequence scores.

    Returns:
        ``[B, H, Tq, d]``, dtype of ``q``.

    Raises:
        ValueError: N = 0 (``attention`` is the layer without memory).
    """
    n = memory_k.shape[1]
    if n == 0:
        raise ValueError("memory_k has N=0 slots; use attention() for attention without persistent memory")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    memory_scores = torch.einsum("bhqd,hnd->bhqn", q, memory_k) * scale
    sequence_scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    sequence_scores = sequence_scores + dense_bias(q.shape[-2], k.shape[-2], causal=causal,
                                                   key_padding_mask=key_padding_mask,
                                                   dtype=sequence_scores.dtype, device=q.device)
    weights = torch.softmax(torch.cat([memory_scores, sequence_scores], dim=-1), dim=-1)
    out = torch.einsum("bhqn,hnd->bhqd", weights[..., :n], memory_v)
    out = out + torch.einsum("bhqk,bhkd->bhqd", weights[..., n:], v)
    return out.to(q.dtype)
