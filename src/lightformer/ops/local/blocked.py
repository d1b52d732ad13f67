"""Sliding-window attention computed block by block: O(T·window) time and memory, forward and backward.

Sources: Longformer (Beltagy et al. 2020, "Longformer: The Long-Document Transformer", Sec. 3.1 "Sliding
Window"); local attention of Child et al. 2019 ("Generating Long Sequences with Sparse Transformers", Sec. 4).
Same signature and semantics as the oracle ``ops.local.naive.sliding_window_attention`` (plus ``block_size``).

Algorithm. With the window ``-left <= p_k - p_q <= right`` (``(window - 1, 0)`` causal, ``(window // 2,
window // 2)`` non-causal), the queries are cut into ``nb = ceil(T / Bq)`` blocks of ``Bq`` rows. Query block i
(positions ``[i·Bq, (i+1)·Bq)``) can only see keys in ``[i·Bq - left, (i+1)·Bq - 1 + right]``: a span of
``Bq + left + right`` keys, rounded up to ``S = m·Bq`` so that every span is made of whole key blocks. K and V are
zero-padded by ``left`` rows in front; the span of block i is rows ``[i·Bq, i·Bq + S)`` of the padded ``[L, d]``
matrix of one (batch, head), and the spans of consecutive blocks overlap: they are taken as zero-copy strided views
(``as_strided``, batch stride ``Bq·d``), which the CPU batched matmul reads in place — no span is ever copied. The
blocks are processed in groups of about ``2^22`` scores (all batches and heads together, so that the elementwise
work is a few large ops per group): per group and (batch, head), one batched matmul ``[g, Bq, d] x [g, d, S]`` for
the scores; then, for the whole group, the band mask ``0 <= j - a <= left + right``
(query row a, span column j; the same ``[Bq, S]`` table for every block, ALiBi folded into it per head), the
sequence-edge/key-padding mask only on the blocks that need it, an in-place softmax; per (batch, head) one batched
matmul for the output, written in place. No ``[T, T]`` tensor is ever formed.

Backward: the autograd function keeps the block probabilities ``P`` (``[B·H·nb, Bq, S]`` in all, O(T·S)
elements — linear in T; on CPU keeping them is faster than recomputing them from a saved log-sum-exp as
FlashAttention does) and the padded q, k, v and output (O(T·d)); per group it forms the usual softmax-attention
backward restricted to the blocks (FlashAttention, Dao et al. 2022, Alg. 2):
``dS = P ⊙ (dP − rowsum(P ⊙ dP))`` with ``dP = dO·Vᵀ`` (torch's fused softmax backward, in place),
``dQ = dS·K``, ``dK = dSᵀ·Q``, ``dV = Pᵀ·dO`` (K and V again as span views), the overlapping span gradients being
folded back with ``m`` shifted adds.

Complexity: time O(B·H·T·S·d); memory O(B·H·T·(S + d)) (forward and backward), with
``S = Bq·(1 + ceil((left + right) / Bq))``; ``left`` and ``right`` are clipped to ``T - 1``, so a window longer
than the sequence costs O(T²) at most and never more than the dense oracle.

Dtypes: float64, float32, bfloat16 (and float16). With 16-bit inputs the scores, the bias, P (kept) and dS are in
the input dtype, as in the 16-bit oracle: torch's fused softmax and softmax backward compute in float32 inside and
round their output once (no widening or narrowing passes); the forward matmuls, ``dO·Vᵀ`` and ``dS·K`` run in the
input dtype; the log-sum-exp is float32; the ``dK``/``dV`` span products and their overlap sums run in float32
(weights and rows widened per group), since rounding each of the ``m`` overlapping partial sums to 16 bits makes
dK up to ~2.3x less accurate than the dense 16-bit oracle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightformer.ops.local.naive import window_bounds

from ..softmax.inplace import softmax_, softmax_backward_

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
                 alibi_slopes: Tensor | None, dtype: torch.dtype, device: torch.device, with_lse: bool = False,
                 key_bias: Tensor | None = None):
        self.b, self.h, self.t, self.left, self.bq, self.with_lse = b, h, t, left, bq, with_lse
        self.nb = -(-t // bq)
        self.m = 1 + -(-(left + right) // bq)
        self.span = self.m * bq
        self.length = (self.nb + self.m - 1) * bq  # padded key rows; padded row i holds position i - left
        self.group = max(1, min(self.nb, _GROUP_SCORES // (b * h * bq * self.span)))
        offset = torch.arange(self.span, device=device)[None, :] - torch.arange(bq, device=device)[:, None]
        band = (offset >= 0) & (offset <= left + right)  # [Bq, S]
        table = torch.zeros(bq, self.span, dtype=dtype, device=device).masked_fill_(~band, float("-inf"))
        if alibi_slopes is not None:  # |p_k - p_q| = |offset - left|
            dist = (offset - left).abs().to(dtype)
            table = table - alibi_slopes.detach().to(device=device, dtype=dtype)[:, None, None] * dist
        self.table = table.expand(h, bq, self.span) if table.dim() == 2 else table
        self.table = self.table.unsqueeze(1)  # [H, 1, Bq, S], broadcast over B and the blocks
        bm = 1 if key_padding_mask is None else b
        # the block structure below drives Python control flow, so it is read on the host: without padding it
        # depends on the shapes alone and is built on the CPU (no device sync); a padding mask is read once per call
        host = torch.device("cpu") if key_padding_mask is None else device
        valid = torch.zeros(bm, self.length, dtype=torch.bool, device=host)
        valid[:, left:left + t] = True if key_padding_mask is None else key_padding_mask
        self.valid = valid.to(device)  # [Bm, L]
        self.key_bias = None  # [B, L]: a per-key score bias (ToMe's log size) over the padded key rows
        if key_bias is not None:
            self.key_bias = torch.zeros(b, self.length, dtype=dtype, device=device)
            self.key_bias[:, left:left + t] = key_bias.detach()
        # blocks whose span holds a non-key (sequence edge or padding) need the extra mask
        self.block_masked = (~valid.unfold(1, self.span, bq).all(-1)).any(0).tolist()  # [nb]
        # a query sees no key iff its window holds no valid key: prefix sums over the padded key rows
        csum = torch.nn.functional.pad(valid.cumsum(1), (1, 0))
        rows = torch.arange(self.nb * bq, device=host)
        empty = (csum[:, rows + left + right + 1] - csum[:, rows]) == 0  # [Bm, nb·Bq]
        self.block_empty = empty.view(bm, self.nb, bq).any(-1).any(0).tolist()  # [nb]
        self.empty = empty.to(device)

    def groups(self):
        """Yields ``(i0, i1)``: the query blocks ``[i0, i1)`` processed together, for every batch and head."""
        for i0 in range(0, self.nb, self.group):
            yield i0, min(self.nb, i0 + self.group)

    def mask_(self, s: Tensor, i0: int, i1: int) -> Tensor:
        """Add the band table (and ALiBi) to the scores ``s [B, H, g, Bq, S]`` of blocks ``[i0, i1)`` in place, and
        mask the span columns that hold no key (sequence edge, padding) on the blocks that have any."""
        bq, span = self.bq, self.span
        s.add_(self.table)
        if self.key_bias is not None:  # the span columns' biases: [B, g, S] as overlapping views
            cols = self.key_bias[:, i0 * bq:(i1 - 1) * bq + span].unfold(1, span, bq)
            s.add_(cols[:, None, :, None, :])
        for a, z in _runs(self.block_masked, i0, i1):  # only the blocks whose span holds a non-key
            cols = self.valid[:, a * bq:(z - 1) * bq + span].unfold(1, span, bq)  # [Bm, z - a, S]
            s[:, :, a - i0:z - i0].masked_fill_(~cols[:, None, :, None, :], float("-inf"))
        for a, z in _runs(self.block_empty, i0, i1):
            # keep the softmax finite; the output row is zeroed and its gradient is zero
            s[:, :, a - i0:z - i0].masked_fill_(self.empty[:, a * bq:z * bq].view(-1, 1, z - a, bq, 1), 0.0)
        return s


def _spans(rows: Tensor, i0: int, g: int, bq: int, span: int) -> Tensor:
    """Zero-copy key spans of blocks ``[i0, i0 + g)``: ``rows [L, d]`` (contiguous) -> overlapping ``[g, S, d]`` view,
    block i = rows ``[i·Bq, i·Bq + S)``. CPU batched matmuls take such views as they are (no copy)."""
    d = rows.shape[1]
    return rows.as_strided((g, span, d), (bq * d, d, 1), rows.storage_offset() + i0 * bq * d)


def _scores_into(out: Tensor, a: Tensor, spans: Tensor, scratch: Tensor | None) -> Tensor:
    """``out = a · spansᵀ`` (in a's dtype) for ``a [g, Bq, d]`` and a span view ``spans [g, S, d]``. With 16-bit
    inputs (``scratch``: a 16-bit ``[>= g, S, d]`` buffer) the spans are first copied into ``scratch``: a 16-bit matmul
    with a transposed *strided* operand runs ~3x slower than the copy plus a contiguous one."""
    if scratch is not None:
        spans = scratch[:spans.shape[0]].copy_(spans)
    return torch.bmm(a, spans.transpose(1, 2), out=out)


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
    """Per group of query blocks and per (batch, head) ``j``, with zero-copy span views of the padded K and V:

    forward   ``S = Q_blk · K_spanᵀ``, softmax, ``O_blk = P · V_span``;
    backward  ``dP = dO_blk · V_spanᵀ``, ``dS = P ⊙ (dP − δ)``, ``dQ_blk = dS · K_span``, and the span gradients
              ``dK_span = dSᵀ · Q_blk``, ``dV_span = Pᵀ · dO_blk`` into one reused ``[B·H, g, S, d]`` buffer,
              folded into ``[B·H, L, d]`` accumulators with ``m`` shifted adds.

    Row layouts only: a transposed copy of K or V (to feed the score matmul a plain ``[d, S]`` operand) costs more
    than the transposed-operand matmul saves. Every matmul writes into a preallocated buffer (``out=``): a fresh
    output of a few MiB is a fresh mmap, zero-filled page by page.
    """

    @staticmethod
    def forward(ctx, q, k, v, plan, scale):
        b, h, t, d = q.shape
        low = q.dtype in _LOW_PRECISION
        sdt = torch.float32 if low else q.dtype  # dtype of the softmax statistics (lse)
        bh, bq, nb, span = b * h, plan.bq, plan.nb, plan.span
        qp = _padded(q, 0, nb * bq, scale).view(bh, nb, bq, d)  # scale folded into q
        kp = _padded(k, plan.left, plan.length).view(bh, plan.length, d)
        vp = _padded(v, plan.left, plan.length).view(bh, plan.length, d)
        op = q.new_empty(bh, nb, bq, d)
        # log Σ_window exp(score) per query, only when asked for (``plan.with_lse``)
        lse = torch.empty(bh, nb, bq, 1, dtype=sdt, device=q.device) if plan.with_lse else None
        probs = []  # per group [B·H, g, Bq, S], kept for backward: O(T·S) in all
        keep = any(ctx.needs_input_grad[:3])  # without backward, one group buffer is reused
        buf = None
        span_buf = q.new_empty(plan.group, span, d) if low else None
        for i0, i1 in plan.groups():
            g = i1 - i0
            if keep or buf is None:
                buf = q.new_empty(bh * g * bq * span if keep else bh * plan.group * bq * span)
            s = _lead(buf, bh, g, bq, span)
            for j in range(bh):
                _scores_into(s[j], qp[j, i0:i1], _spans(kp[j], i0, g, bq, span), span_buf)
            plan.mask_(s.view(b, h, g, bq, span), i0, i1)
            row_max = s.amax(-1, keepdim=True) if lse is not None else None
            # P in place, in the input dtype: torch's fused softmax computes in float32 inside for 16-bit inputs and
            # rounds once (as the 16-bit oracle does), and its exp is not slowed by the -inf band entries (a plain
            # exp_ of masked scores leaves the vector path: docs/architecture.md, CPU facts)
            softmax_(s)
            if lse is not None:  # P = 1 / Σ exp(s − max) at the row's maximum, so lse = max − log max(P)
                lse_g = lse[:, i0:i1]
                lse_g.copy_(row_max)
                lse_g.sub_(s.amax(-1, keepdim=True).to(sdt).log_())
            if keep:
                probs.append(s)
            for j in range(bh):
                torch.bmm(s[j], _spans(vp[j], i0, g, bq, span), out=op[j, i0:i1])
        op = op.view(b, h, nb * bq, d)
        if lse is not None:
            lse = lse.view(b, h, nb * bq)
        if any(plan.block_empty):
            op.masked_fill_(plan.empty.view(-1, 1, nb * bq, 1), 0.0)
            if lse is not None:
                lse.masked_fill_(plan.empty.view(-1, 1, nb * bq), -math.inf)
        if keep:
            ctx.save_for_backward(qp, kp, vp, *probs)
        ctx.plan = plan
        ctx.scale = scale
        return op[:, :, :t], (lse[:, :, :t] if lse is not None else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        qp, kp, vp, *probs = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        b, h, t, bq, nb, span, m, left = plan.b, plan.h, plan.t, plan.bq, plan.nb, plan.span, plan.m, plan.left
        bh, d, length = b * h, qp.shape[-1], plan.length
        dtype = qp.dtype
        low = dtype in _LOW_PRECISION
        acc = torch.float32 if low else dtype  # dK, dV sums over the overlapping spans
        if dout is None:
            dout = qp.new_zeros(b, h, t, d)
        dop = _padded(dout.to(dtype), 0, nb * bq).view(b, h, nb * bq, d)
        # d lse / d s = P, so the log-sum-exp's gradient enters as dS = P ⊙ (dP − rowsum(P ⊙ dP) + dlse)
        dl = None if dlse is None else _padded(dlse.to(dtype)[..., None], 0, nb * bq).view(b, h, nb * bq, 1)
        if any(plan.block_empty):  # rows that see no key pass no gradient
            dop.masked_fill_(plan.empty.view(-1, 1, nb * bq, 1), 0.0)
            if dl is not None:
                dl.masked_fill_(plan.empty.view(-1, 1, nb * bq, 1), 0.0)
        dl = None if dl is None else dl.view(bh, nb, bq, 1)
        dop = dop.view(bh, nb, bq, d)
        group, dev = plan.group, qp.device
        dq = torch.empty_like(qp)
        dkp = torch.empty(bh, length, d, dtype=acc, device=dev)  # dK, dV over the padded rows (see _fold_add)
        dvp = torch.empty(bh, length, d, dtype=acc, device=dev)
        dkp[:, :(m - 1) * bq].zero_()
        dvp[:, :(m - 1) * bq].zero_()
        dbuf = qp.new_empty(bh * group * bq * span)
        span_buf = qp.new_empty(group, span, d) if low else None
        part = torch.empty(bh * group * span * d, dtype=acc, device=dev)
        # 16-bit: the dK, dV span products in float32 (weights and rows widened per group into reused buffers):
        # rounding each of the m overlapping partial sums to 16 bits makes dK up to ~2.3x less accurate than the
        # dense 16-bit oracle (max error, T=257, window 16)
        weights32 = torch.empty(dbuf.shape, dtype=acc, device=dev) if low else None
        rows32 = torch.empty(bh * group * bq * d, dtype=acc, device=dev) if low else None
        for (i0, i1), p in zip(plan.groups(), probs):
            g = i1 - i0
            ds = _lead(dbuf, bh, g, bq, span)
            for j in range(bh):  # dP
                _scores_into(ds[j], dop[j, i0:i1], _spans(vp[j], i0, g, bq, span), span_buf)
            # dS = P ⊙ (dP − rowsum(P ⊙ dP)) by torch's fused softmax backward, in place, in the input dtype
            # (float32 inside for 16-bit inputs, rounded once)
            softmax_backward_(ds, p, dtype)
            if dl is not None:
                ds.addcmul_(p, dl[:, i0:i1])
            for j in range(bh):
                torch.bmm(ds[j], _spans(kp[j], i0, g, bq, span), out=dq[j, i0:i1])
            for grad, weights, src in ((dkp, ds, qp), (dvp, p, dop)):
                rows = src[:, i0:i1]
                if low:
                    weights = _lead(weights32, bh, g, bq, span).copy_(weights)
                    rows = _lead(rows32, bh, g, bq, d).copy_(rows)
                pv = _lead(part, bh, g, span, d)
                for j in range(bh):
                    torch.bmm(weights[j].transpose(1, 2), rows[j], out=pv[j])  # [g, S, d]
                _fold_add(grad[:, i0 * bq:(i1 - 1) * bq + span], pv, m)
        dq = dq.view(b, h, nb * bq, d)[:, :, :t].mul_(scale)
        dk, dv = (x[:, left:left + t].view(b, h, t, d).to(dtype) for x in (dkp, dvp))
        return dq, dk, dv, None, None


def _lead(flat: Tensor, *shape: int) -> Tensor:
    """The first ``prod(shape)`` elements of a flat work buffer as a contiguous ``shape`` tensor (a smaller last
    group reuses the front of the buffer and stays contiguous, which the in-place softmax needs)."""
    return flat[:math.prod(shape)].view(shape)


def _fold_add(acc: Tensor, parts: Tensor, m: int) -> None:
    """``acc [B·H, (g + m − 1)·Bq, d] +=`` the overlapping spans ``parts [B·H, g, m·Bq, d]`` (the adjoint of taking
    the spans), for groups folded in order into an accumulator whose first ``m − 1`` blocks start at zero: the
    last ``g`` blocks of ``acc`` are not yet touched by earlier groups, so the last span slice is assigned to them
    rather than added (no zero-fill of the whole accumulator)."""
    bh, rows, d = acc.shape
    g, span = parts.shape[1], parts.shape[2]
    bq = span // m
    blocks = acc.view(bh, rows // bq, bq, d)
    blocks[:, m - 1:m - 1 + g] = parts[:, :, (m - 1) * bq:]
    for r in range(m - 1):
        blocks[:, r:r + g] += parts[:, :, r * bq:(r + 1) * bq]


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, alibi_slopes: Tensor | None,
           block_size: int | None, key_bias: Tensor | None = None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, H, T, d] with the same shape, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, h, t, _ = q.shape
    if key_padding_mask is not None and (key_padding_mask.shape != (b, t) or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be a bool [B, T] = [{b}, {t}] tensor, got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    if alibi_slopes is not None and alibi_slopes.shape != (h,):
        raise ValueError(f"alibi_slopes must be [H] = [{h}], got {tuple(alibi_slopes.shape)}")
    if key_bias is not None:
        if key_bias.shape != (b, t) or not key_bias.is_floating_point():
            raise ValueError(f"key_bias must be a floating [B, T] = [{b}, {t}] tensor, got "
                             f"{key_bias.dtype} {tuple(key_bias.shape)}")
        if key_bias.requires_grad:
            raise ValueError("key_bias is a constant (ToMe's log token sizes): it takes no gradient")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")


@torch.compiler.disable  # a hand-written kernel: runs eagerly inside a compiled model (docs/architecture.md)
def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool,
                             key_padding_mask: Tensor | None = None, alibi_slopes: Tensor | None = None,
                             scale: float | None = None, block_size: int | None = None,
                             return_lse: bool = False,
                             key_bias: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
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
        return_lse: also return the log-sum-exp of each query's window scores (differentiable), to merge this
            attention with attention over other keys (``o = Σ_parts o_i·exp(lse_i − lse)``).
        key_bias: ``[B, T]`` floating, added to every score of key j (ToMe's proportional attention, ``+ log s_j``:
            Bolya et al. 2023, Eq. 1), in the scores' dtype; a constant (no gradient). The window is by index.

    Returns:
        ``[B, H, T, d]`` in the dtype of ``q``; a query that sees no key outputs zeros (and passes zero gradients).
        With ``return_lse``: ``(output, lse)``, lse ``[B, H, T]`` float32 (float64 for float64), ``-inf`` for a
        query that sees no key.

    Raises:
        ValueError: ``window`` or ``block_size`` is not a positive int, a shape does not match, or ``key_bias``
            requires a gradient.
    """
    left, right = window_bounds(window, causal)
    _check(q, k, v, key_padding_mask, alibi_slopes, block_size, key_bias)
    b, h, t, d = q.shape
    if t == 0 or b * h == 0:
        out = q.new_zeros(q.shape)
        if not return_lse:
            return out
        return out, torch.full(q.shape[:3], -math.inf, dtype=torch.float64 if q.dtype == torch.float64
                               else torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    left, right = min(left, t - 1), min(right, t - 1)  # a window wider than the sequence sees all of it
    bq = min(block_size or default_block_size(window, causal), t)
    plan = _Plan(b, h, t, left, right, bq, key_padding_mask, alibi_slopes, q.dtype, q.device, with_lse=return_lse,
                 key_bias=key_bias)
    out, lse = _SlidingWindowAttention.apply(q, k, v, plan, scale)
    return (out, lse) if return_lse else out
