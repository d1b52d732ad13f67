"""Splitting a fused QKV projection into per-head q, k, v with a one-copy backward.

``rearrange(y, "b t (n d) -> b n t d").split(...)`` is free forward, but its backward is two full copies: autograd
concatenates dq, dk, dv into ``[B, N, T, d]`` and the linear layer's backward then copies that permuted gradient
into the contiguous ``[B·T, N·d]`` its matmul needs. ``split_heads`` writes each gradient once, straight into the
``[B, T, N·d]`` layout of the projection output.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_heads"]


class _SplitHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, sizes: tuple[int, ...], head_dim: int):
        b, t, _ = y.shape
        y4 = y.view(b, t, sum(sizes), head_dim)
        ctx.sizes, ctx.shape, ctx.dtype = sizes, y4.shape, y.dtype
        outs, start = [], 0
        for n in sizes:
            outs.append(y4[:, :, start:start + n].permute(0, 2, 1, 3))
            start += n
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor | None):
        b, t, n_all, d = ctx.shape
        out = torch.empty(b, t, n_all, d, dtype=ctx.dtype, device=next(g for g in grads if g is not None).device)
        start = 0
        for n, g in zip(ctx.sizes, grads):
            dst = out[:, :, start:start + n]
            if g is None:
                dst.zero_()
            else:
                dst.copy_(g.permute(0, 2, 1, 3))
            start += n
        return out.view(b, t, n_all * d), None, None


def split_heads(y: Tensor, sizes: tuple[int, ...], head_dim: int) -> tuple[Tensor, ...]:
    """``y [B, T, (n_1 + n_2 + …)·d]`` -> ``([B, n_1, T, d], [B, n_2, T, d], …)``: strided views forward, one
    copy of each gradient backward (into y's layout).

    Raises:
        ValueError: y is not 3-D or its last dim is not ``sum(sizes)·head_dim``.
    """
    if y.dim() != 3 or y.shape[-1] != sum(sizes) * head_dim:
        raise ValueError(f"y must be [B, T, {sum(sizes)}·{head_dim}], got {tuple(y.shape)}")
    return _SplitHeads.apply(y, tuple(sizes), head_dim)
