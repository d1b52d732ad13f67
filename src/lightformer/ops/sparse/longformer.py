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
Both global parts are one autograd function (``_GlobalTokens``) that writes each gradient once. The global rows run
in the input dtype (fused softmax, float32 inside for 16-bit inputs); the merge runs in float32.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ..local.blocked import sliding_window_attention
from ..softmax.inplace import softmax_, softmax_backward_
from .naive import window_bounds

#: query rows per chunk of the merge with the global keys, for every (batch, head) at once (temporaries of
#: ``[B, H, C, d]``: 4 MiB at B·H = 8, small enough for the C allocator to recycle)
MERGE_ROWS = 2048


def _chunks(start: int, stop: int):
    """``(a, z)`` row ranges of at most ``MERGE_ROWS`` covering ``[start, stop)``."""
    for a in range(start, stop, MERGE_ROWS):
        yield a, min(stop, a + MERGE_ROWS)


def _finite(x: Tensor) -> Tensor:
    """``x`` with ``-inf`` (rows that see no key) replaced by 0: a safe shift for ``exp``."""
    return x.masked_fill(torch.isinf(x), 0.0)


def _scaled_mm(a: Tensor, b: Tensor, scale: float, out: Tensor | None = None) -> Tensor:
    """``scale · (a @ b)``, the scale applied inside the matmul (before its rounding), with no extra pass."""
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    return torch.addmm(zero, a, b, beta=0, alpha=scale, out=out)


def _global_rows_forward(q: Tensor, k: Tensor, v: Tensor, hide: Tensor | None, g: int, causal: bool, scale: float,
                         out: Tensor) -> list[Tensor]:
    """Rows ``i < g`` of every (batch, head): ``softmax(q_i Kᵀ·scale) V`` over every real key (causal: ``j <= i``),
    written into ``out [B, H, g, d]``. q, k, v ``[B, H, T, d]``, hide ``[B, T]`` (True = padded key) or None. Returns
    the weights of each (batch, head) row, ``[g, kg]`` (kg = g causal, else T), for ``_global_rows_backward``.
    Scores and weights are in the input dtype: torch's fused softmax computes in float32 inside for 16-bit inputs and
    rounds once, as the 16-bit oracle does (no widening pass), and its exp is not slowed by ``-inf`` entries (a plain
    ``exp_`` is, docs/architecture.md, CPU facts)."""
    b, h, t, _ = q.shape
    kg = g if causal else t  # causal: a global row i < g sees only keys <= i, all of them < g
    future = torch.ones(g, g, dtype=torch.bool, device=q.device).triu_(1) if causal else None
    masks = []  # per batch element: (hidden [1|g, kg] or None, rows that see no key [g, 1] or None)
    for i in range(b):
        mask = None if hide is None else hide[i][None, :kg]
        if future is not None:
            mask = future if mask is None else mask | future
        empty = None if mask is None else mask.all(-1, keepdim=True).expand(g, 1)
        masks.append((mask, empty if empty is not None and bool(empty.any()) else None))
    probs = []
    for r in itertools.product(range(b), range(h)):
        s = _scaled_mm(q[r][:g], k[r][:kg].t(), scale)  # [g, kg], becomes the kept weights in place
        mask, empty = masks[r[0]]
        if mask is not None:  # (a full-width masked_fill for nothing costs as much as the softmax)
            s.masked_fill_(mask, -math.inf)
        if empty is not None:
            s.masked_fill_(empty, 0.0)  # keep the softmax finite
        softmax_(s)
        if empty is not None:
            s.masked_fill_(empty, 0.0)  # a row that sees nothing: 0
        torch.mm(s, v[r][:kg], out=out[r])
        probs.append(s)
    return probs


def _global_rows_backward(probs: list[Tensor], dout: Tensor, q: Tensor, k: Tensor, v: Tensor, scale: float,
                          dq: Tensor, dk: Tensor, dv: Tensor) -> None:
    """Adjoint of ``_global_rows_forward`` (dS = P ⊙ (dP − rowsum(P ⊙ dP)) by torch's fused softmax backward, in
    the input dtype like the forward) for ``dout [B, H, g, d]``: writes ``dq [B, H, g, d]`` and all of ``dk``, ``dv``
    ``[B, H, T, d]`` (causal: zero for the keys ``>= g``). Only the first g rows of q are read."""
    g, kg = probs[0].shape
    dt = q.dtype
    if kg < k.shape[2]:  # keys >= g are seen by no global row
        dk[:, :, kg:].zero_()
        dv[:, :, kg:].zero_()
    # one work buffer for every (batch, head): a fresh [g, T] tensor per head is a fresh mmap, zero-filled page by
    # page (docs/architecture.md, CPU facts)
    ds = q.new_empty(g, kg)
    for p, r in zip(probs, itertools.product(range(q.shape[0]), range(q.shape[1]))):
        do = dout[r].to(dt)
        torch.mm(do, v[r][:kg].t(), out=ds)  # dP
        softmax_backward_(ds, p, dt)
        _scaled_mm(ds, k[r][:kg], scale, out=dq[r])
        _scaled_mm(ds.t(), q[r][:g], scale, out=dk[r][:kg])
        torch.mm(p.t(), do, out=dv[r][:kg])


class _GlobalRows(torch.autograd.Function):
    """Rows ``i < g``: dense attention to every key (see ``global_rows_attention``)."""

    @staticmethod
    def forward(ctx, q, k, v, hide, g, causal, scale):
        out = q.new_empty(*q.shape[:2], g, q.shape[3])
        ctx.probs = _global_rows_forward(q, k, v, hide, g, causal, scale, out)
        ctx.save_for_backward(q, k, v)
        ctx.g, ctx.scale = g, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q), q.new_empty(q.shape), q.new_empty(q.shape)
        _global_rows_backward(ctx.probs, dout, q, k, v, ctx.scale, dq[:, :, :ctx.g], dk, dv)
        return dq, dk, dv, None, None, None, None


def global_rows_attention(q: Tensor, k: Tensor, v: Tensor, num_rows: int, *, causal: bool,
                          key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """The first ``num_rows`` queries attend to every key (causal: to keys ``j <= i``): the global rows of Longformer
    (Beltagy et al. 2020, Sec. 3.1, "Global Attention") and of BigBird-ITC (Zaheer et al. 2020, App. D). Time
    O(num_rows·T·d); memory O(num_rows·T) for the weights kept for the backward (in the input dtype).

    Args:
        q, k, v: ``[B, H, T, d]`` (any strides), float64 / float32 / bfloat16.
        num_rows: g, 1 <= g <= T.
        key_padding_mask: ``[B, T]`` bool, True = real key.
        scale: score scale, default ``1/sqrt(d)``.

    Returns:
        ``[B, H, g, d]`` in the dtype of q (a row that sees no key gives 0). Gradients flow to q (its first g rows),
        k and v. Matmuls, weights and the softmax run in the input dtype (torch's fused softmax and its backward
        compute in float32 inside for 16-bit inputs).
    """
    b, _, t, d = q.shape
    if not 1 <= num_rows <= t:
        raise ValueError(f"num_rows must be in [1, T={t}], got {num_rows}")
    hide = None if key_padding_mask is None else ~key_padding_mask
    return _GlobalRows.apply(q, k, v, hide, num_rows, causal, 1.0 / math.sqrt(d) if scale is None else float(scale))


class _GlobalTokens(torch.autograd.Function):
    """The global-token part of Longformer around a finished sliding-window result.

    Inputs q, k, v ``[B, H, T, d]`` (any strides), the window output ``o_w [B, H, T, d]`` and its log-sum-exp
    ``lse_w [B, H, T]`` (keys ``< g`` hidden from the window), ``hide [B, T]`` (True = padded key) or None. Output
    ``[B, H, T, d]``:

    * rows ``i < g`` (global queries): ``softmax(q_i Kᵀ·scale) V`` over every real key (causal: ``j <= i``);
    * rows ``i >= g``: the window merged with the g global keys, ``o = p_w·o_w + Σ_j p_j v_j`` with
      ``p_w = e^(lse_w − L)``, ``p_j = e^(s_j − L)``, ``L = log(e^lse_w + Σ_j e^s_j)`` (shifted by the row's largest
      exponent; a row that sees nothing gets 0).

    Backward, with ``c = dO·o = p_w (dO·o_w) + Σ_j p_j (dO·v_j)``: ``d o_w = p_w dO``, ``d lse_w = p_w (dO·o_w − c)``,
    ``dS_j = p_j (dO·v_j − c)``; the global rows use the softmax backward with ``rowsum(P ⊙ dP)``. Every gradient
    is written once, full size, so autograd adds nothing but the window kernel's own. The global rows run per
    (batch, head) with their matmuls in the input dtype; the merge runs in chunks of ``MERGE_ROWS`` rows of every
    (batch, head) at once, all in float32 (float64 for float64).
    """

    @staticmethod
    def forward(ctx, q, k, v, o_w, lse_w, hide, g, causal, scale):
        b, h, t, d = q.shape
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        tiny = torch.finfo(cdt).tiny
        out = q.new_empty(b, h, t, d)
        p_rows = _global_rows_forward(q, k, v, hide, g, causal, scale, out[:, :, :g])
        p_glob = torch.empty(b, h, t - g, g, dtype=cdt, device=q.device)  # the other rows' global-key weights
        p_win = torch.empty(b, h, t - g, 1, dtype=cdt, device=q.device)  # ... and their window's total weight
        # the other rows, in chunks of rows of every (batch, head) at once: window merged with the g global keys
        k_g, v_g = k[:, :, :g].to(cdt), v[:, :, :g].to(cdt)  # [B, H, g, d]
        for a, z in _chunks(g, t):
            s = torch.matmul(q[:, :, a:z].to(cdt), k_g.transpose(-1, -2)).mul_(scale)  # [B, H, C, g]
            if hide is not None:
                s.masked_fill_(hide[:, None, None, :g], -math.inf)
            lw = lse_w[:, :, a:z, None].to(cdt)  # [B, H, C, 1]
            shift = _finite(torch.maximum(lw, s.amax(-1, keepdim=True)))
            pw = torch.sub(lw, shift, out=p_win[:, :, a - g:z - g]).exp_()
            pg = torch.sub(s, shift, out=p_glob[:, :, a - g:z - g]).exp_()
            den = (pw + pg.sum(-1, keepdim=True)).clamp_(min=tiny)
            pw.div_(den)
            pg.div_(den)
            out[:, :, a:z] = torch.matmul(pg, v_g).addcmul_(o_w[:, :, a:z].to(cdt), pw)
        ctx.save_for_backward(q, k, v, o_w, p_glob, p_win)
        ctx.p_rows = p_rows
        ctx.g, ctx.scale = g, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, o_w, p_glob, p_win = ctx.saved_tensors
        g, scale = ctx.g, ctx.scale
        b, h, t, d = q.shape
        cdt = p_glob.dtype
        dq, dk, dv = q.new_empty(b, h, t, d), q.new_empty(b, h, t, d), q.new_empty(b, h, t, d)
        do_w, dlse = o_w.new_empty(b, h, t, d), torch.empty(b, h, t, dtype=cdt, device=q.device)
        do_w[:, :, :g].zero_()  # global rows do not use the window
        dlse[:, :, :g].zero_()
        _global_rows_backward(ctx.p_rows, dout[:, :, :g], q, k, v, scale, dq[:, :, :g], dk, dv)
        # the other rows, in chunks (the global keys' gradients from them are added to the global rows')
        k_g, v_g = k[:, :, :g].to(cdt), v[:, :, :g].to(cdt)
        dk_g = torch.zeros(b, h, g, d, dtype=cdt, device=q.device)
        dv_g = torch.zeros(b, h, g, d, dtype=cdt, device=q.device)
        for a, z in _chunks(g, t):
            pg, pw = p_glob[:, :, a - g:z - g], p_win[:, :, a - g:z - g]  # [B, H, C, g], [B, H, C, 1]
            doc = dout[:, :, a:z].to(cdt)
            dot_w = (doc * o_w[:, :, a:z].to(cdt)).sum(-1, keepdim=True)  # dO·o_w
            dpg = torch.matmul(doc, v_g.transpose(-1, -2))  # dO·v_j [B, H, C, g]
            c = (pg * dpg).sum(-1, keepdim=True).addcmul_(pw, dot_w)  # dO·o
            dlse[:, :, a:z] = dot_w.sub_(c).mul_(pw).squeeze(-1)
            do_w[:, :, a:z] = doc * pw
            ds = dpg.sub_(c).mul_(pg).mul_(scale)  # [B, H, C, g]
            dq[:, :, a:z] = torch.matmul(ds, k_g)
            dk_g += torch.matmul(ds.transpose(-1, -2), q[:, :, a:z].to(cdt))
            dv_g += torch.matmul(pg.transpose(-1, -2), doc)
        dk[:, :, :g] = dk_g.add_(dk[:, :, :g])
        dv[:, :, :g] = dv_g.add_(dv[:, :, :g])
        return dq, dk, dv, do_w, dlse, None, None, None, None


@torch.compiler.disable  # a hand-written kernel: runs eagerly inside a compiled model (docs/architecture.md)
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
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    if t > g:
        # window part: keys < g are global keys, counted once, by _GlobalTokens
        win_real = real.clone()
        win_real[:, :g] = False
        o_w, lse_w = sliding_window_attention(q, k, v, window=window, causal=causal, key_padding_mask=win_real,
                                              scale=scale, block_size=block_size, return_lse=True)
    else:  # every row is a global row
        o_w, lse_w = q.new_zeros(q.shape), torch.full(q.shape[:3], -math.inf, dtype=cdt, device=q.device)
    hide = None if key_padding_mask is None else ~key_padding_mask
    return _GlobalTokens.apply(q, k, v, o_w, lse_w, hide, g, causal, scale)
