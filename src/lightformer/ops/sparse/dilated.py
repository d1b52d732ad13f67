"""Dilated sliding-window attention, fast path: O(T·window·d).

Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer", Sec. 3 (dilated neighborhood attention), in 1-D:
query i sees the keys ``i + δ·o`` for the window offsets o (causal: ``o = 0, -1, .., -(window-1)``; else
``|o| <= window // 2``), δ = ``dilation``. Same signature and result as ``naive.dilated_window_attention``.

Computation: the keys a query sees all share its residue ``i mod δ``, so the sequence is zero-padded to a multiple of
δ (padding keys masked), split into δ interleaved sub-sequences ``x[r::δ]`` folded into the batch (``[B·δ, H, T/δ,
d]``), where the pattern is a plain sliding window of ``window`` keys, computed by the sliding-window kernel
``ops.local.blocked.sliding_window_attention`` (zero-copy key spans, O(T·window) memory); the result is interleaved
back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..local.blocked import sliding_window_attention
from .naive import window_bounds


@torch.compiler.disable  # a hand-written kernel: runs eagerly inside a compiled model (docs/architecture.md)
def dilated_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, dilation: int, causal: bool,
                             key_padding_mask: Tensor | None = None, scale: float | None = None,
                             block_size: int | None = None) -> Tensor:
    """Dilated sliding-window attention, see the module docstring.

    Args:
        q, k, v: ``[B, H, T, d]``, float64 / float32 / bfloat16.
        window: keys per query (causal: itself and the ``window - 1`` previous of its residue class; else
            ``window // 2`` on each side).
        dilation: step δ >= 1 between the keys of a window (1 = plain sliding window).
        causal: hide keys after the query.
        key_padding_mask: ``[B, T]`` bool, True = real key.
        scale: score scale, default ``1/sqrt(d)``.
        block_size: query rows per block in the sub-sequences; any value gives the same result.

    Returns:
        ``[B, H, T, d]`` in the dtype of q.

    Raises:
        ValueError: ``window`` or ``dilation`` not a positive int, or mismatched shapes.
    """
    window_bounds(window, causal)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be [B, H, T, d] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if dilation == 1:
        return sliding_window_attention(q, k, v, window=window, causal=causal, key_padding_mask=key_padding_mask,
                                        scale=scale, block_size=block_size)
    b, _, t, _ = q.shape
    pad = -t % dilation
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        real = torch.ones(b, t, dtype=torch.bool, device=q.device) if key_padding_mask is None else key_padding_mask
        key_padding_mask = F.pad(real, (0, pad), value=False)
    q, k, v = (rearrange(x, "b h (n r) d -> (b r) h n d", r=dilation) for x in (q, k, v))
    if key_padding_mask is not None:
        key_padding_mask = rearrange(key_padding_mask, "b (n r) -> (b r) n", r=dilation)
    o = sliding_window_attention(q, k, v, window=window, causal=causal, key_padding_mask=key_padding_mask,
                                 scale=scale, block_size=block_size)  # [B·δ, H, T/δ, d]
    return rearrange(o, "(b r) h n d -> b h (n r) d", r=dilation)[:, :, :t]
