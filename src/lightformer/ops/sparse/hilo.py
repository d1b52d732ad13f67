"""HiLo attention (1-D), fast path: O(T·window·d) for the Hi-Fi heads, O(T·(T/window)·d) for the Lo-Fi heads.

Pan, Cai, Zhuang 2022, "Fast Vision Transformers with HiLo Attention", Sec. 3.2, in 1-D. The heads are split: the
first ``H - num_lofi`` (Hi-Fi) attend within non-overlapping windows of ``window`` tokens (local detail), the last
``num_lofi`` (Lo-Fi) attend from every query to the keys and values average-pooled over those windows (global
context). Same signature and result as ``naive.hilo_attention``.

Computation (``blocked.gathered_attention``):
    * Hi-Fi: query blocks = the windows (``Bq = window``), each gathers its own window's keys: ``S = window``, no
      wasted column; causal adds ``j <= i``.
    * Lo-Fi: ``P = ceil(T / window)`` pooled keys/values, means over the real tokens of each window (padding
      excluded, a window with none is hidden); every query block sees all P. Causal: only windows completed at the
      query, ``(p + 1)·window - 1 <= i`` (so a query before the end of the first window has no Lo-Fi context and
      outputs 0 on those heads; exact causality, the pooled mean never contains a future token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .blocked import BlockPattern, gathered_attention

#: query rows per block of the Lo-Fi heads (each row sees all T/window pooled keys)
LOFI_BLOCK = 64


def pool_windows(x: Tensor, window: int, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean of ``x [B, H, T, d]`` over each window of ``window`` tokens, real tokens only.

    Returns:
        pooled ``[B, H, P, d]`` and ``has_real [B or 1, P]`` bool (windows holding at least one real token).
    """
    b, h, t, d = x.shape
    pad = -t % window
    real = torch.ones(1, t, dtype=torch.bool, device=x.device) if key_padding_mask is None else key_padding_mask
    real = F.pad(real, (0, pad), value=False)  # [B|1, P·w]
    acc = torch.promote_types(x.dtype, torch.float32)  # 16-bit inputs: sum and divide in fp32, round once
    xs = F.pad(x, (0, 0, 0, pad)) if pad else x
    xs = xs.to(acc) * real[:, None, :, None].to(acc)
    count = rearrange(real, "b (p w) -> b p w", w=window).sum(-1)  # [B|1, P]
    total = rearrange(xs, "b h (p w) d -> b h p w d", w=window).sum(3)  # [B, H, P, d]
    return (total / count.clamp_min(1)[:, None, :, None].to(acc)).to(x.dtype), count > 0


@torch.compiler.disable  # a hand-written kernel: runs eagerly inside a compiled model (docs/architecture.md)
def hilo_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, num_lofi: int, causal: bool,
                   key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """HiLo attention, see the module docstring.

    Args:
        q, k, v: ``[B, H, T, d]``, float64 / float32 / bfloat16.
        window: Hi-Fi window size = Lo-Fi pooling size (tokens).
        num_lofi: number of Lo-Fi heads (the last ones), 0 <= num_lofi <= H.
        causal: exact causal form (see the module docstring).
        key_padding_mask: ``[B, T]`` bool, True = real key.
        scale: score scale, default ``1/sqrt(d)``.

    Returns:
        ``[B, H, T, d]`` in the dtype of q.

    Raises:
        ValueError: ``window`` or ``num_lofi`` out of range, or mismatched shapes.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be [B, H, T, d] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, h, t, _ = q.shape
    if isinstance(num_lofi, bool) or not isinstance(num_lofi, int) or not 0 <= num_lofi <= h:
        raise ValueError(f"num_lofi must be an int in [0, H={h}], got {num_lofi!r}")
    hi = h - num_lofi
    outs = []
    if hi:
        bq = min(window, t)
        nb = -(-t // bq)
        pos = torch.arange(nb * bq, device=q.device).view(1, nb, bq)  # each block's own keys
        pos = torch.where(pos < t, pos, torch.full_like(pos, -1))
        band = torch.ones(bq, bq, dtype=torch.bool, device=q.device).tril() if causal else None  # j <= i
        # assigned before the append: under torch.compile a graph break inside the call with a bound method of
        # this call's list on the stack invalidates the resumed frame's cache, so every call recompiled (torch 2.13)
        hifi = gathered_attention(q[:, :hi], k[:, :hi], v[:, :hi], BlockPattern(bq, pos, band=band),
                                  key_padding_mask=key_padding_mask, scale=scale)
        outs.append(hifi)
    if num_lofi:
        k_pool, has_real = pool_windows(k[:, hi:], window, key_padding_mask)  # [B, L, P, d]
        v_pool, _ = pool_windows(v[:, hi:], window, key_padding_mask)
        rule = (lambda qp, kp: (kp + 1) * window - 1 <= qp) if causal else None
        lofi = gathered_attention(q[:, hi:], k_pool, v_pool, BlockPattern(min(LOFI_BLOCK, t), None, rule=rule),
                                  key_padding_mask=has_real.expand(b, -1), scale=scale)
        outs.append(lofi)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
