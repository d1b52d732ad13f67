"""Reversed attention computed key block by key block, with recomputation in the backward pass: O(T²·d) time,
O(T·Bk) working memory forward AND backward (never a ``[T, T]`` tensor, nothing quadratic saved for backward).

Source: Ding et al. 2023, "Visual Dependency Transformers", Sec. 3.1 (semantics: ``naive.reversed_attention``,
softmax over the query axis). Because each column of A is normalised on its own, a block of Bk keys scored
against ALL queries holds complete columns: its column log-sum-exp ``lse_j = logsumexp_i S_ij`` and its
probabilities ``P = exp(S − lse)`` are final, and ``out += P V_blk`` needs no online rescaling (unlike row-softmax
FlashAttention). Only ``lse`` (``[B, H, T]``) is saved; the backward pass recomputes each block's P and applies the
column-softmax backward (FlashAttention-style, Dao et al. 2022, Alg. 2, with the axes swapped):

    dV_blk = Pᵀ dO,   dP = dO V_blkᵀ,   c_j = Σ_i P_ij dP_ij = v_j · dV_j,   dS = P ⊙ (dP − c),
    dQ += scale · dS K_blk,   dK_blk = scale · dSᵀ Q.

Dtypes: float64, float32, bfloat16/float16. With 16-bit inputs the matmuls run in the input dtype, the scores'
exponentials and the log-sum-exp in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _stat(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _block_probs(q: Tensor, kb: Tensor, scale: float, qmask: Tensor | None, lse: Tensor | None
                 ) -> tuple[Tensor, Tensor]:
    """Scores of all queries against one key block -> (P ``[B, H, T, Bk]`` in the stat dtype, lse ``[B, H, Bk]``).
    Columns with no receiver (padded keys) get lse = +∞, hence P = 0."""
    s = (q @ kb.transpose(-1, -2)).to(_stat(q)) * scale  # [B, H, T, Bk]
    if qmask is not None:
        s = s.masked_fill(~qmask, float("-inf"))
    if lse is None:
        lse = torch.logsumexp(s, dim=-2)  # [B, H, Bk]
        lse = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf")))
    return torch.exp(s - lse[..., None, :]), lse


class _ReversedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, scale, block):
        b, h, t, d = q.shape
        qmask = None if key_padding_mask is None else key_padding_mask[:, None, :, None]  # receivers
        out = torch.zeros(b, h, t, d, dtype=_stat(q), device=q.device)
        lses = []
        for j0 in range(0, t, block):
            j1 = min(t, j0 + block)
            p, lse = _block_probs(q, k[:, :, j0:j1], scale, qmask, None)
            if key_padding_mask is not None:  # senders: padded keys send nothing
                lse = lse.masked_fill(~key_padding_mask[:, None, j0:j1], float("inf"))
                p = p.masked_fill(~key_padding_mask[:, None, None, j0:j1], 0.0)
            lses.append(lse)
            out += (p.to(q.dtype) @ v[:, :, j0:j1]).to(out.dtype)
        ctx.save_for_backward(q, k, v, torch.cat(lses, dim=-1), key_padding_mask)
        ctx.scale, ctx.block = scale, block
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, lse, key_padding_mask = ctx.saved_tensors
        scale, block = ctx.scale, ctx.block
        t = q.shape[2]
        qmask = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
        sd = _stat(q)
        d_out = d_out.to(q.dtype)
        dq = torch.zeros(q.shape, dtype=sd, device=q.device)
        dk = torch.empty(k.shape, dtype=sd, device=k.device)
        dv = torch.empty(v.shape, dtype=sd, device=v.device)
        for j0 in range(0, t, block):
            j1 = min(t, j0 + block)
            kb, vb = k[:, :, j0:j1], v[:, :, j0:j1]
            p, _ = _block_probs(q, kb, scale, qmask, lse[..., j0:j1])  # [B, H, T, Bk]
            dvb = (p.to(q.dtype).transpose(-1, -2) @ d_out).to(sd)  # [B, H, Bk, d]
            dp = (d_out @ vb.transpose(-1, -2)).to(sd)  # [B, H, T, Bk]
            c = (vb.to(sd) * dvb).sum(-1)  # [B, H, Bk] = Σ_i P_ij dP_ij
            ds = (p * (dp - c[..., None, :])).to(q.dtype)
            dq += (ds @ kb).to(sd) * scale
            dk[:, :, j0:j1] = (ds.transpose(-1, -2) @ q).to(sd) * scale
            dv[:, :, j0:j1] = dvb
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def reversed_attention(q: Tensor, k: Tensor, v: Tensor, *, key_padding_mask: Tensor | None = None,
                       scale: float | None = None, block_size: int = 256) -> Tensor:
    """Reversed attention (column softmax), q/k/v ``[B, H, T, d]`` -> ``[B, H, T, d]``; same semantics as
    ``naive.reversed_attention``. ``block_size``: keys per block Bk."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return _ReversedAttention.apply(q, k, v, key_padding_mask, scale, block_size)
