"""Longformer attention, fast path: sliding window + global tokens in O(T·(window + num_global)·d).

Beltagy, Peters, Cohan 2020, "Longformer: The Long-Document Transformer", Sec. 3.1: each query attends to a window
of keys around it ("Sliding Window") and ``num_global`` pre-selected tokens (here the first positions) attend to
every key and are attended by every query ("Global Attention", the symmetric global pattern of Eq. 1 with shared
projections). Same signature and result as ``naive.longformer_attention``.

Computation (``blocked.gathered_attention``):
    * rows ``i < g`` (global queries, ``g = min(num_global, T)``): one pattern whose blocks see all T keys (causal:
      ``j <= i``): O(g·T·d);
    * rows ``i >= g``: query blocks of ``Bq`` rows gather the g global keys plus their window span of
      ``Bq + left + right`` keys; span columns at positions ``< g`` are emptied (``-1``), since the global columns
      already hold those keys, so each allowed pair is counted once: O(T·(g + Bq + left + right)·d).
The two row ranges are disjoint, so the output is their concatenation (no log-sum-exp merge is needed); both run
as segments of one ``gathered_attention`` call (one autograd node, one dK/dV accumulation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .blocked import BlockPattern, gathered_attention
from .naive import window_bounds

#: query rows per block of the global rows (they see all T keys: keep a block's scores small)
GLOBAL_ROWS_BLOCK = 16


def default_block_size(window: int, causal: bool) -> int:
    """``Bq`` when not given: a block spends ``Bq + left + right`` columns on ``left + right + 1`` useful keys, but
    the gathered keys are ``(Bq + left + right) / Bq`` copies of K and V and small blocks give small matmuls; half the
    reach, a power of two in [16, 128], balances the two (measured on AVX-512, window 256: 128 beats 32 and 64)."""
    left, right = window_bounds(window, causal)
    reach = max(left + right, 1)
    return int(min(128, max(16, 1 << max(0, (reach // 2).bit_length() - 1))))


def global_rows_pattern(g: int, causal: bool) -> BlockPattern:
    """Rows ``0..g-1`` attend to every key (causal: earlier ones)."""
    rule = (lambda qp, kp: kp <= qp) if causal else None
    return BlockPattern(block_size=min(g, GLOBAL_ROWS_BLOCK), key_index=None, rule=rule, q_offset=0)


def window_pattern(t: int, *, left: int, right: int, num_global: int, causal: bool, block_size: int,
                   device: torch.device) -> BlockPattern:
    """Rows ``g..T-1``: ``[1, nb, g + Bq + left + right]`` key lists = global keys, then the window span."""
    g = min(num_global, t)
    nb = -(-(t - g) // block_size)
    span = block_size + left + right
    starts = g + torch.arange(nb, device=device) * block_size - left  # first span key of each block
    win = starts[:, None] + torch.arange(span, device=device)[None, :]  # [nb, span]
    win = torch.where((win >= g) & (win < t), win, torch.full_like(win, -1))  # < g: held by the global columns
    idx = torch.cat([torch.arange(g, device=device).expand(nb, g), win], dim=1)[None]  # [1, nb, S]

    # band: the same for every block; global columns always visible (their keys precede every row here),
    # window column c of row a holds the key at offset rel = c - a - left from the query
    a = torch.arange(block_size, device=device)[:, None]
    rel = torch.arange(span, device=device)[None, :] - a - left  # [Bq, span]
    band = torch.cat([torch.ones(block_size, g, dtype=torch.bool, device=device), (rel >= -left) & (rel <= right)],
                     dim=1)  # [Bq, S]; causal: right = 0
    return BlockPattern(block_size=block_size, key_index=idx, band=band, q_offset=g)


def longformer_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, num_global: int, causal: bool,
                         key_padding_mask: Tensor | None = None, scale: float | None = None,
                         block_size: int | None = None) -> Tensor:
    """Sliding-window + global-token attention, see the module docstring.

    Args:
        q, k, v: ``[B, H, T, d]``, float64 / float32 / bfloat16.
        window: keys of the window (causal: the ``window`` most recent including itself; else ``window // 2`` on
            each side plus itself).
        num_global: number of global tokens (the first positions), >= 0.
        causal: hide keys after the query.
        key_padding_mask: ``[B, T]`` bool, True = real key.
        scale: score scale, default ``1/sqrt(d)``.
        block_size: query rows per block (default ``default_block_size``); any value gives the same result.

    Returns:
        ``[B, H, T, d]`` in the dtype of q.

    Raises:
        ValueError: ``window``, ``num_global`` or ``block_size`` out of range, or mismatched shapes.
    """
    left, right = window_bounds(window, causal)
    if isinstance(num_global, bool) or not isinstance(num_global, int) or num_global < 0:
        raise ValueError(f"num_global must be an int >= 0, got {num_global!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be [B, H, T, d] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    t = q.shape[2]
    g = min(num_global, t)
    left, right = min(left, t - 1), min(right, t - 1)  # a window wider than the sequence sees all of it
    bq = min(block_size or default_block_size(window, causal), max(t - g, 1))
    parts = [(0, global_rows_pattern(g, causal))] if g else []
    if t > g:
        parts.append((g, window_pattern(t, left=left, right=right, num_global=g, causal=causal, block_size=bq,
                                        device=q.device)))
    return gathered_attention(q, k, v, parts, key_padding_mask=key_padding_mask, scale=scale)
