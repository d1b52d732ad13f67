"""Sliding-window attention computed block by block: O(T·window) time and memory, forward and backward.

Sources: Longformer (Beltagy et al. 2020, "Longformer: The Long-Document Transformer", Sec. 3.1 "Sliding
Window"); local attention of Child et al. 2019 ("Generating Long Sequences with Sparse Transformers", Sec. 4).
Same signature and semantics as the oracle ``ops.local.naive.sliding_window_attention`` (plus ``block_size``).

Algorithm. With the window ``-left <= p_k - p_q <= right`` (``(window - 1, 0)`` causal, ``(window // 2,
window // 2)`` non-causal), the queries are cut into ``nb = ceil(T / Bq)`` blocks of ``Bq`` rows. Query block i
(positions ``[i·Bq, (i+1)·Bq)``) can only see keys in ``[i·Bq - left, (i+1)·Bq - 1 + right]``: a span of
``Bq + left + right`` keys, rounded up to ``S = m·Bq`` so that every span is made of whole key blocks. K and V are
zero-padded by ``left`` rows in front; the spans of consecutive blocks are overlapping strided views (``unfold``)
of the padded K and V. The blocks are processed in groups of about ``2^22`` scores (all batches and heads
together, so that the number of tensor ops per call stays small): per group, one copy of the key spans, one
batched matmul ``[B·H·g, Bq, d] x [B·H·g, d, S]`` for the scores, the band mask ``0 <= j - a <= left + right``
(query row a, span column j; the same ``[Bq, S]`` table for every block, ALiBi folded into it per head), the
sequence-edge/key-padding mask only on the blocks that need it, an in-place softmax, one batched matmul for the
output. No ``[T, T]`` tensor is ever formed.

Backward: the autograd function keeps the block probabilities ``P`` (``[B·H·nb, Bq, S]`` in all, O(T·S)
elements — linear in T; on CPU keeping them is faster than recomputing them from a saved log-sum-exp as
FlashAttention does) and the padded q, k, v and output (O(T·d)); per group it forms the usual softmax-attention
backward restricted to the blocks (FlashAttention, Dao et al. 2022, Alg. 2):
``dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))``, ``dQ = dS·K``, ``dK = dSᵀ·Q``, ``dV = Pᵀ·dO``, the overlapping span
gradients being folded back with ``m`` shifted adds.

Complexity: time O(B·H·T·S·d); memory O(B·H·T·(S + d)) (forward and backward), with
``S = Bq·(1 + ceil((left + right) / Bq))``; ``left`` and ``right`` are clipped to ``T - 1``, so a window longer
than the sequence costs O(T²) at most and never more than the dense oracle.

Dtypes: float64, float32, bfloat16 (and float16). With 16-bit inputs the forward matmuls, ``dO·Vᵀ`` and ``dS·K``
run in the input dtype; the softmax statistics, the bias, ``dS`` (with ``rowsum(P ⊙ dP)``, as 16-bit ``O`` is too
coarse) and the ``dK``/``dV`` span products and their overlap sums run in float32, since rounding each of the ``m``
overlapping partial sums to 16 bits would be up to ~3x less accurate than the dense oracle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightformer.ops.local.naive import window_bounds

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_GROUP_SCORES = 2 ** 22  # scores per group of blocks (all batches and heads): 16 MiB in float32


def default_block_size(window: int, causal: bool) -> int:
    """Query block size ``Bq`` used when ``block_size=None``: a quarter of the key reach ``left + right``, as a
    power of two in [16, 128].

    A block computes ``Bq·ceil(1 + reach/Bq)`` score columns for ``reach + 1`` useful ones, so smaller blocks waste
    less; below ~64 rows the batched matmuls lose efficiency on AVX-512 CPUs.
    """
    left, right = window_bounds(window, causal)
    reach = max(left + right, 1)
    return int(min(128, max(16, 2 ** round(math.log2(max(reach / 4, 1))))))


def _padded(x: Tensor, front: int, length: int, scale: float | None = None) -> Tensor:
    """``[B, H, T, d]`` (any strides) -> contiguous ``[B, H, length, d]`` with rows ``[front, front + T)`` = x."""
    b, h, t, d = x.shape
    out = x.new_empty(b, h, length, d)
    out[:, :, :front].zero_()
    out[:, :, front + t:].zero_()
    out[:, :, front:front + t].copy_(x)
    if scale is not None:
        out.mul_(scale)
    return out


class _Plan:
    """Everything about one call that does not depend on the values of q, k, v: sizes, masks, groups."""

    def __init__(self, b: int, h: int, t: int, left: int, right: int, bq: int, key_padding_mask: Tensor | None,
                 alibi_slopes: Tensor | None, cdt: torch.dtype, device: torch.device):
        self.b, self.h, self.t, self.left, self.bq = b, h, t, left, bq
        self.nb = -(-t // bq)
        self.m = 1 + -(-(left + right) // bq)
        self.span = self.m * bq
        self.length = (self.nb + self.m - 1) * bq  # padded key rows; padded row i holds position i - left
        self.group = max(1, min(self.nb, _GROUP_SCORES // (b * h * bq * self.span)))
        offset = torch.arange(self.span, device=device)[None, :] - torch.arange(bq, device=device)[:, None]
        band = (offset >= 0) & (offset <= left + right)  # [Bq, S]
        table = torch.zeros(bq, self.span, dtype=cdt, device=device).masked_fill_(~band, float("-inf"))
        if alibi_slopes is not None:  # |p_k - p_q| = |offset - left|
            dist = (offset - left).abs().to(cdt)
            table = table - alibi_slopes.detach().to(device=device, dtype=cdt)[:, None, None] * dist
        self.table = table.expand(h, bq, self.span) if table.dim() == 2 else table
        self.table = self.table.unsqueeze(1)  # [H, 1, Bq, S], broadcast over B and the blocks
        bm = 1 if key_padding_mask is None else b
        valid = torch.zeros(bm, self.length, dtype=torch.bool, device=device)
        valid[:, left:left + t] = True if key_padding_mask is None else key_padding_mask
        self.valid = valid  # [Bm, L]
        # blocks whose span holds a non-key (sequence edge or padding) need the extra mask
        self.block_masked = (~valid.unfold(1, self.span, bq).all(-1)).any(0).tolist()  # [nb]
        # a query sees no key iff its window holds no valid key: prefix sums over the padded key rows
        csum = torch.nn.functional.pad(valid.cumsum(1), (1, 0))
        rows = torch.arange(self.nb * bq, device=device)
        self.empty = (csum[:, rows + left + right + 1] - csum[:, rows]) == 0  # [Bm, nb·Bq]
        self.block_empty = self.empty.view(bm, self.nb, bq).any(-1).any(0).tolist()  # [nb]

    def groups(self):
        """Yields ``(i0, i1)``: the query blocks ``[i0, i1)`` processed together, for every batch and head."""
        for i0 in range(0, self.nb, self.group):
            yield i0, min(self.nb, i0 + self.group)

    def key_spans(self, kp: Tensor, i0: int, i1: int, dtype: torch.dtype) -> Tensor:
        """The spans ``[B·H·g, S, d]`` of blocks ``[i0, i1)`` from the padded ``[B, H, L, d]`` keys (one copy)."""
        bq, span = self.bq, self.span
        spans = kp[:, :, i0 * bq:(i1 - 1) * bq + span].unfold(2, span, bq).transpose(-1, -2)  # [B, H, g, S, d]
        return spans.to(dtype).reshape(-1, span, kp.shape[-1])

    def scores(self, qc: Tensor, kc: Tensor, i0: int, i1: int, buf: Tensor) -> Tensor:
        """Biased, masked scores ``[B, H, g, Bq, S]`` (dtype of buf) of blocks ``[i0, i1)``, written into buf.

        qc: ``[B·H·g, Bq, d]`` query blocks; kc: ``[B·H·g, S, d]`` key spans."""
        bq, span, g = self.bq, self.span, i1 - i0
        n = qc.shape[0]
        if buf.dtype == qc.dtype:
            s = torch.bmm(qc, kc.transpose(1, 2), out=buf[:n])
        else:
            s = buf[:n].copy_(torch.bmm(qc, kc.transpose(1, 2)))
        s = s.view(self.b, self.h, g, bq, span)
        s.add_(self.table)
        for a, z in _runs(self.block_masked, i0, i1):  # only the blocks whose span holds a non-key
            cols = self.valid[:, a * bq:(z - 1) * bq + span].unfold(1, span, bq)  # [Bm, z - a, S]
            s[:, :, a - i0:z - i0].masked_fill_(~cols[:, None, :, None, :], float("-inf"))
        for a, z in _runs(self.block_empty, i0, i1):
            # keep the softmax finite; the output row is zeroed and its gradient is zero
            s[:, :, a - i0:z - i0].masked_fill_(self.empty[:, a * bq:z * bq].view(-1, 1, z - a, bq, 1), 0.0)
        return s


def _runs(flags: list[bool], i0: int, i1: int):
    """Maximal runs ``(a, z)`` of consecutive True flags in ``flags[i0:i1]``."""
    a = None
    for i in range(i0, i1):
        if flags[i] and a is None:
            a = i
        elif not flags[i] and a is not None:
            yield a, i
            a = None
    if a is not None:
        yield a, i1


class _SlidingWindowAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, plan, scale):
        b, h, t, d = q.shape
        cdt = torch.float32 if q.dtype in _LOW_PRECISION else q.dtype
        bq, nb, span = plan.bq, plan.nb, plan.span
        qp = _padded(q, 0, nb * bq, scale)  # [B, H, nb·Bq, d], scale folded into q
        kp = _padded(k, plan.left, plan.length)  # [B, H, L, d]
        vp = _padded(v, plan.left, plan.length)
        op = q.new_empty(b, h, nb * bq, d)
        probs = []  # per group [B·H·g, Bq, S], kept for backward: O(T·S) in all
        keep = any(ctx.needs_input_grad[:3])  # without backward, one group buffer is reused
        buf = None
        for i0, i1 in plan.groups():
            g, rows = i1 - i0, slice(i0 * bq, i1 * bq)
            qc = qp[:, :, rows].reshape(-1, bq, d)  # [B·H·g, Bq, d]
            if keep or buf is None:
                buf = torch.empty(b * h * plan.group, bq, span, dtype=cdt, device=q.device)
            buf = buf[:qc.shape[0]]
            s = plan.scores(qc, plan.key_spans(kp, i0, i1, q.dtype), i0, i1, buf).view(b, h, g * bq, span)
            s.sub_(s.amax(-1, keepdim=True)).exp_()
            s.div_(s.sum(-1, keepdim=True))  # P, softmax statistics in cdt
            if keep:
                probs.append(buf)
            oc = torch.bmm(buf.to(q.dtype), plan.key_spans(vp, i0, i1, q.dtype))
            op[:, :, rows] = oc.view(b, h, g * bq, d)
        if any(plan.block_empty):
            op.masked_fill_(plan.empty.view(-1, 1, nb * bq, 1), 0.0)
        if keep:
            ctx.save_for_backward(qp, kp, vp, op, *probs)
        ctx.plan = plan
        ctx.scale = scale
        return op[:, :, :t]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        qp, kp, vp, op, *probs = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        b, h, t, bq, nb, span, m, left = plan.b, plan.h, plan.t, plan.bq, plan.nb, plan.span, plan.m, plan.left
        d = qp.shape[-1]
        dtype = qp.dtype
        cdt = probs[0].dtype
        dop = _padded(dout.to(dtype), 0, nb * bq).view(b, h, nb * bq, d)
        if any(plan.block_empty):  # rows that see no key pass no gradient
            dop.masked_fill_(plan.empty.view(-1, 1, nb * bq, 1), 0.0)
        delta = None  # [B, H, nb·Bq, 1] = rowsum(P ⊙ dP) = rowsum(dO ⊙ O)
        if cdt == dtype:
            delta = (dop * op).sum(-1, keepdim=True)
        dq = torch.empty_like(qp)
        dkp = torch.zeros(kp.shape, dtype=cdt, device=kp.device)  # [B, H, L, d]
        dvp = torch.zeros(vp.shape, dtype=cdt, device=vp.device)
        dbuf = torch.empty_like(probs[0])
        for (i0, i1), p in zip(plan.groups(), probs):
            g, rows = i1 - i0, slice(i0 * bq, i1 * bq)
            keys = slice(i0 * bq, (i1 - 1) * bq + span)
            qc = qp[:, :, rows].reshape(-1, bq, d)  # [B·H·g, Bq, d]
            doc = dop[:, :, rows].reshape(-1, bq, d)
            kc = plan.key_spans(kp, i0, i1, dtype)  # [B·H·g, S, d]
            vc = plan.key_spans(vp, i0, i1, dtype)
            n = qc.shape[0]
            if cdt == dtype:
                ds = torch.bmm(doc, vc.transpose(1, 2), out=dbuf[:n])
            else:
                ds = dbuf[:n].copy_(torch.bmm(doc, vc.transpose(1, 2)))
            pv, ds = p.view(b, h, g * bq, span), ds.view(b, h, g * bq, span)  # P, dP
            if delta is None:  # 16-bit O is too coarse for rowsum(dO ⊙ O): use rowsum(P ⊙ dP) in float32
                ds.sub_((pv * ds).sum(-1, keepdim=True)).mul_(pv)
            else:
                ds.sub_(delta[:, :, rows]).mul_(pv)  # dS = P ⊙ (dP − delta)
            ds = ds.view(-1, bq, span)
            dq[:, :, rows] = torch.bmm(ds.to(dtype), kc).view(b, h, g * bq, d)
            # dK, dV: with 16-bit inputs the span products are formed in float32 (exact products of the 16-bit
            # values), else the m overlapping partial sums of each key would each be rounded to 16 bits
            _fold_add(dkp[:, :, keys], torch.bmm(ds.transpose(1, 2), qc.to(cdt)), m)
            _fold_add(dvp[:, :, keys], torch.bmm(p.transpose(1, 2), doc.to(cdt)), m)
        dq.mul_(scale)
        return (dq[:, :, :t], dkp[:, :, left:left + t].to(dtype), dvp[:, :, left:left + t].to(dtype), None, None)


def _fold_add(acc: Tensor, spans: Tensor, m: int) -> None:
    """``acc [B, H, (g + m - 1)·Bq, d] += `` the overlapping spans ``[B·H·g, m·Bq, d]`` (adjoint of unfold)."""
    b, h, rows, d = acc.shape
    n, span, _ = spans.shape
    bq = span // m
    g = n // (b * h)
    blocks = acc.view(b, h, rows // bq, bq, d)
    parts = spans.view(b, h, g, m, bq, d)
    for r in range(m):
        blocks[:, :, r:r + g] += parts[:, :, :, r]


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, alibi_slopes: Tensor | None,
           block_size: int | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, H, T, d] with the same shape, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, h, t, _ = q.shape
    if key_padding_mask is not None and (key_padding_mask.shape != (b, t) or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be a bool [B, T] = [{b}, {t}] tensor, got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    if alibi_slopes is not None and alibi_slopes.shape != (h,):
        raise ValueError(f"alibi_slopes must be [H] = [{h}], got {tuple(alibi_slopes.shape)}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool,
                             key_padding_mask: Tensor | None = None, alibi_slopes: Tensor | None = None,
                             scale: float | None = None, block_size: int | None = None) -> Tensor:
    """Sliding-window softmax attention in O(T·window) time and memory (forward and backward).

    Args:
        q, k, v: ``[B, H, T, d]`` (same T, any strides), float64 / float32 / bfloat16 / float16.
        window: positive int; causal: each query sees the ``window`` most recent keys including itself;
            non-causal: ``window // 2`` keys on each side plus itself.
        causal: whether keys after the query are hidden.
        key_padding_mask: ``[B, T]`` bool, True = real key.
        alibi_slopes: ``[H]``, adds ``-slope_h · |p_q - p_k|`` to the scores (a constant: no gradient).
        scale: score scale, default ``1/sqrt(d)``.
        block_size: query block size ``Bq``; default ``default_block_size(window, causal)``; clipped to T.

    Returns:
        ``[B, H, T, d]`` in the dtype of ``q``; a query that sees no key outputs zeros (and passes zero gradients).

    Raises:
        ValueError: ``window`` or ``block_size`` is not a positive int, or a shape does not match.
    """
    left, right = window_bounds(window, causal)
    _check(q, k, v, key_padding_mask, alibi_slopes, block_size)
    b, h, t, d = q.shape
    if t == 0 or b * h == 0:
        return q.new_zeros(q.shape)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    left, right = min(left, t - 1), min(right, t - 1)  # a window wider than the sequence sees all of it
    bq = min(block_size or default_block_size(window, causal), t)
    cdt = torch.float32 if q.dtype in _LOW_PRECISION else q.dtype
    plan = _Plan(b, h, t, left, right, bq, key_padding_mask, alibi_slopes, cdt, q.device)
    return _SlidingWindowAttention.apply(q, k, v, plan, scale)
