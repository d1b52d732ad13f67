"""Longformer attention, fast path: sliding window + global tokens in O(T·(window + num_global)·d).

Beltagy, Peters, Cohan 2020, "Longformer: The Long-Document Transformer", Sec. 3.1: each query attends to a window
of keys around it ("Sliding Window") and ``num_global`` pre-selected tokens (here the first positions) attend to
every key and are attended by every query ("Global Attention", the symmetric global pattern of Eq. 1 with shared
projections). Same signature and result as ``naive.longformer_attention``.

Computation, with ``g = min(num_global, T)``:
    * rows ``i >= g``: the union of two disjoint key sets, merged exactly through their log-sum-exps —
      the window keys at positions ``>= g`` (the sliding-window kernel ``ops.local.blocked``, zero-copy key spans,
      keys ``< g`` hidden by its padding mask) and the g global keys (one ``[T, g]`` score block):
      ``o = (o_win·e^(lse_win − c) + Σ_j e^(s_j − c)·v_j) / (e^(lse_win − c) + Σ_j e^(s_j − c))``, ``c`` the row's
      largest exponent, so nothing overflows and a row that sees no key gets 0 without a 0/0;
    * rows ``i < g`` (global queries): dense attention to every key (causal: ``j <= i``), O(g·T·d).
The global parts run in float32 for 16-bit inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

import math

from ..local.blocked import sliding_window_attention
from .blocked import BlockPattern
from .naive import window_bounds

#: query rows per block of the global rows (they see all T keys: keep a block's scores small)
GLOBAL_ROWS_BLOCK = 16


def global_rows_pattern(g: int, causal: bool) -> BlockPattern:
    """Rows ``0..g-1`` attend to every key (causal: earlier ones)."""
    rule = (lambda qp, kp: kp <= qp) if causal else None
    return BlockPattern(block_size=min(g, GLOBAL_ROWS_BLOCK), key_index=None, rule=rule, q_offset=0)


def _masked_scores(q: Tensor, k: Tensor, scale: float, hide: Tensor | None) -> Tensor:
    """``q kᵀ·scale`` in float32 (float64 for float64) with ``hide`` (broadcastable bool, True = hidden) at −inf."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)).mul_(scale)
    return s if hide is None else s.masked_fill(hide, -math.inf)


def _shift(x: Tensor) -> Tensor:
    """A detached per-row shift: ``x`` with ``-inf`` (rows that see nothing) replaced by 0."""
    x = x.detach()
    return torch.where(torch.isinf(x), torch.zeros_like(x), x)


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
        block_size: query rows per block of the sliding-window kernel (default: its own); any value gives the
            same result.

    Returns:
        ``[B, H, T, d]`` in the dtype of q.

    Raises:
        ValueError: ``window``, ``num_global`` or ``block_size`` out of range, or mismatched shapes.
    """
    window_bounds(window, causal)  # validates window
    if isinstance(num_global, bool) or not isinstance(num_global, int) or num_global < 0:
        raise ValueError(f"num_global must be an int >= 0, got {num_global!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be [B, H, T, d] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, _, t, d = q.shape
    g = min(num_global, t)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if g == 0:
        return sliding_window_attention(q, k, v, window=window, causal=causal, key_padding_mask=key_padding_mask,
                                        scale=scale, block_size=block_size)
    real = torch.ones(b, t, dtype=torch.bool, device=q.device) if key_padding_mask is None else key_padding_mask
    pad = ~real[:, None, None, :]  # [B, 1, 1, T], True = padded key
    outs = []
    # global rows: every key (causal: j <= i, all of them global keys since i < g)
    kg = t if not causal else g
    hide = pad[..., :kg]
    if causal:
        hide = hide | torch.ones(g, g, dtype=torch.bool, device=q.device).triu_(1)
    s = _masked_scores(q[:, :, :g], k[:, :, :kg], scale, hide)  # [B, H, g, kg]
    e = torch.exp(s - _shift(s.amax(-1, keepdim=True)))
    z = e.sum(-1, keepdim=True)
    outs.append(torch.matmul(e, v[:, :, :kg].to(e.dtype)) / torch.where(z == 0, torch.ones_like(z), z))
    if t > g:
        # window part: keys < g are global keys, counted once, in the global block below
        win_real = real.clone()
        win_real[:, :g] = False
        o_w, lse_w = sliding_window_attention(q, k, v, window=window, causal=causal, key_padding_mask=win_real,
                                              scale=scale, block_size=block_size, return_lse=True)
        o_w, lse_w = o_w[:, :, g:], lse_w[:, :, g:, None]  # [B, H, T − g, d], [B, H, T − g, 1]
        s = _masked_scores(q[:, :, g:], k[:, :, :g], scale, pad[..., :g])  # [B, H, T − g, g]
        c = _shift(torch.maximum(lse_w, s.amax(-1, keepdim=True)))
        a_w = torch.exp(lse_w - c)  # the window's total weight, relative to e^c
        e = torch.exp(s - c)
        den = a_w + e.sum(-1, keepdim=True)
        den = torch.where(den == 0, torch.ones_like(den), den)
        # o = o_w·(a_w/den) + (e/den)·V_g: the weights are [.., 1] and [.., g]; one fused pass over the output rows
        # (addcmul reads o_w in its own dtype)
        outs.append(torch.addcmul(torch.matmul(e / den, v[:, :, :g].to(e.dtype)), o_w, a_w / den))
    return torch.cat(outs, dim=2).to(q.dtype)
