"""Oracles of the sparse / windowed attention patterns: dense softmax attention with the explicit sparsity mask.

Every function here builds the full ``[Tq, Tk]`` boolean mask of its pattern from the paper's definition, written
for reading, and calls ``masked_attention``; O(T²) time and memory. The fast paths in ``ops/sparse`` (same
signatures) are tested against them. Conventions (shapes, padding, empty rows) follow ``ops/softmax/naive.py``:

    q, k, v: ``[B, H, T, d]``; output ``[B, H, T, d]`` in the dtype of q.
    key_padding_mask: ``[B, T]`` bool, True = real key; masked keys get weight 0.
    A query that sees no key at all outputs zeros.

Patterns (query at position i, key at position j):
    longformer (Beltagy et al. 2020, "Longformer: The Long-Document Transformer", Sec. 3.1): the sliding window
        (causal: ``i - window < j <= i``; else ``|j - i| <= window // 2``) plus ``num_global`` global tokens, the
        first positions, which attend to every key and are attended by every query; causal adds ``j <= i``.
    bigbird (Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", Sec. 2 and App. D, ITC): blocks of
        ``block_size``; query block n sees key blocks n-1, n, n+1, the first ``num_global`` blocks and the random
        blocks ``random_blocks[n]``; the global blocks see everything; causal adds ``j <= i``.
    dilated window (Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer", Sec. 3, in 1-D): keys
        ``j = i + dilation·o`` for window offsets o (causal: ``o = 0, -1, .., -(window-1)``; else
        ``|o| <= window // 2``).
    hilo (Pan et al. 2022, "Fast Vision Transformers with HiLo Attention", Sec. 3.2, in 1-D): the first
        ``H - num_lofi`` heads (Hi-Fi) attend within non-overlapping windows of ``window`` tokens; the last
        ``num_lofi`` heads (Lo-Fi) attend to keys/values average-pooled over those windows (over real tokens only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..local.naive import window_bounds  # the sliding-window semantics, shared with ops/local


def masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, *, key_padding_mask: Tensor | None = None,
                     scale: float | None = None) -> Tensor:
    """Dense softmax attention where only ``allowed`` pairs count.

    Args:
        q: ``[B, H, Tq, d]``; k, v: ``[B, H, Tk, d]``.
        allowed: bool, broadcastable to ``[B, H, Tq, Tk]`` (True = the query may attend to the key).
        key_padding_mask: ``[B, Tk]`` bool, True = real key.
        scale: default ``1/sqrt(d)``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    empty = ~allowed.expand(scores.shape).any(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v).to(q.dtype)


def _rel(t: int, device: torch.device) -> tuple[Tensor, Tensor]:
    i = torch.arange(t, device=device)[:, None]  # query positions
    j = torch.arange(t, device=device)[None, :]  # key positions
    return i, j


def longformer_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, num_global: int, causal: bool,
                         key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Longformer attention: sliding window + global tokens (the first ``num_global`` positions)."""
    left, right = window_bounds(window, causal)
    i, j = _rel(q.shape[2], q.device)
    in_window = (j - i >= -left) & (j - i <= right)
    allowed = in_window | (j < num_global) | (i < num_global)
    if causal:
        allowed = allowed & (j <= i)
    return masked_attention(q, k, v, allowed, key_padding_mask=key_padding_mask, scale=scale)


def bigbird_attention(q: Tensor, k: Tensor, v: Tensor, *, block_size: int, num_global: int, random_blocks: Tensor,
                      causal: bool, key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """BigBird-ITC attention. ``random_blocks``: ``[Bm, nb, r]`` long, the random key blocks of each query block
    (``-1`` = none), ``Bm`` = 1 or B, ``nb = ceil(T / block_size)``."""
    i, j = _rel(q.shape[2], q.device)
    qb, kb = i // block_size, j // block_size  # block of each query / key
    allowed = ((kb - qb).abs() <= 1) | (kb < num_global) | (qb < num_global)  # [T, T]
    rand_of_query = random_blocks[:, qb[:, 0], :]  # [Bm, T, r]: random blocks of each query's block
    is_random = (rand_of_query[:, :, :, None] == kb[0][None, None, None, :]).any(dim=2)  # [Bm, T, T]
    allowed = allowed[None] | is_random
    if causal:
        allowed = allowed & (j <= i)
    return masked_attention(q, k, v, allowed[:, None], key_padding_mask=key_padding_mask, scale=scale)


def dilated_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, dilation: int, causal: bool,
                             key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Dilated sliding window: keys ``i + dilation·o`` for the window offsets ``o``."""
    left, right = window_bounds(window, causal)
    i, j = _rel(q.shape[2], q.device)
    steps = torch.div(j - i, dilation, rounding_mode="floor")
    allowed = ((j - i) % dilation == 0) & (steps >= -left) & (steps <= right)
    return masked_attention(q, k, v, allowed, key_padding_mask=key_padding_mask, scale=scale)


def hilo_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, num_lofi: int, causal: bool,
                   key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """HiLo attention. Hi-Fi heads ``[:H - num_lofi]``: attention inside the window of the query (causal adds
    ``j <= i``). Lo-Fi heads ``[H - num_lofi:]``: attention to the mean keys/values of each window (means over real
    tokens; a window without one is hidden); causal: only windows completed at the query, ``(p + 1)·window - 1 <= i``.
    """
    b, h, t, _ = q.shape
    hi = h - num_lofi
    i, j = _rel(t, q.device)
    outs = []
    if hi:
        same = (i // window) == (j // window)
        if causal:
            same = same & (j <= i)
        outs.append(masked_attention(q[:, :hi], k[:, :hi], v[:, :hi], same, key_padding_mask=key_padding_mask,
                                     scale=scale))
    if num_lofi:
        n_win = -(-t // window)
        member = (j[0][:, None] // window == torch.arange(n_win, device=q.device)[None, :]).to(k.dtype)  # [T, P]
        real = torch.ones(b, t, dtype=k.dtype, device=q.device) if key_padding_mask is None \
            else key_padding_mask.to(k.dtype)
        weights = member[None] * real[:, :, None]  # [B, T, P]: which real tokens fall in window p
        count = weights.sum(1)  # [B, P]
        mean = weights / count.clamp_min(1.0)[:, None, :]
        k_pool = torch.einsum("btp,bhtd->bhpd", mean, k[:, hi:])  # [B, L, P, d]
        v_pool = torch.einsum("btp,bhtd->bhpd", mean, v[:, hi:])
        p = torch.arange(n_win, device=q.device)[None, :]
        allowed = ((p + 1) * window - 1 <= i) if causal else torch.ones(t, n_win, dtype=torch.bool, device=q.device)
        outs.append(masked_attention(q[:, hi:], k_pool, v_pool, allowed, key_padding_mask=count > 0, scale=scale))
    return torch.cat(outs, dim=1)
