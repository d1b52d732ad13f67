"""Exact softmax attention, tiled with an online softmax (FlashAttention on the CPU).

Sources:
    Dao, Fu, Ermon, Rudra, Ré 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness",
    Algorithm 1 (forward with an online softmax over key blocks) and Algorithm 4 (backward by recomputation);
    Dao 2023, "FlashAttention-2: Better Parallelism and Work Partitioning", Algorithm 1 (deferred normalisation:
    the output is divided by the softmax sum once, after the last key block) and Algorithm 2 (backward with
    ``D = rowsum(dO ∘ O)`` and ``dS = P ∘ (dP − D)``).

The result equals ``naive.attention`` (same conventions, see ``ops/softmax/naive.py``); only the memory and the
order of the floating-point operations differ. The forward keeps, per query block, the running row max ``m`` and sum
``l`` and an unnormalised output; it saves only ``q, k, v``, the output and the log-sum-exp ``[B, H, Tq]``. The
backward recomputes each score block from ``q, k`` and the log-sum-exp. No ``[Tq, Tk]`` tensor is ever built: the
temporaries are a few ``[B·H, block_q, block_k]`` blocks, and masks and the ALiBi or T5 bias are made per block.

A learned bucketed relative bias (T5, Raffel et al. 2020, Sec. 2.1: ``rel_bias[bucket(p_k − p_q), h]``) is an
input of the autograd function: its gradient is ``dS = P ∘ (dP − D)`` summed by bucket, accumulated per block in
the backward (a scatter-add of the block's ``dS`` by its bucket ids), so it too needs no ``[Tq, Tk]`` tensor.

CPU-specific choices (why, not what):
    * queries are the outer loop, so the output block and its statistics stay in cache while the keys stream by;
      all batch·heads are one batched matmul per block pair (Python overhead is per block, not per head);
    * score blocks live in preallocated buffers and are transformed in place (``exp_``, ``sub_``, ``baddbmm`` with
      ``out=``), so the allocator is not hit in the inner loop;
    * causal attention visits only key blocks at or left of the diagonal; only blocks that straddle it get a mask;
    * ALiBi off the diagonal is split into a column term ``±slope·(p_k − ref)``, added inside the score matmul, and a
      row term ``∓slope·(p_q − ref)`` folded into the row max / log-sum-exp (a per-row constant costs nothing on
      the block); ``ref`` is the block edge nearest the queries, so the rounding of the bias is that of the oracle.
    * a T5 block whose relative positions all share one bucket (beyond ``max_distance``) adds its per-head bias as
      that row term too; only blocks near the diagonal gather an ``[H, block_q, block_k]`` bias from the table.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from .bias import BucketFn
from .buckets import RelativeBuckets

__all__ = ["tiled_attention", "default_block_size"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# exp(-80) ≈ 1.8e-35 is still a normal fp32 number; below that, exp falls into the slow denormal range
_EXP_FLOOR = -80.0

# elements of one [B·H, block_q, block_k] score buffer (4 MiB in fp32); the backward holds two of them
_BLOCK_ELEMENTS = 1 << 20


def default_block_size(tq: int, tk: int, batch_heads: int) -> tuple[int, int]:
    """The ``(block_q, block_k)`` used when ``block_size`` is not given.

    Key and query blocks of up to 256 rows, as large as a score buffer of ``2**20`` elements (4 MiB fp32) allows
    (both shrink, to 64, when there are many batch·heads): every op of the inner loop is a batched matmul or one
    elementwise pass over all ``batch_heads``, so blocks must be large enough to amortise the per-op overhead
    (Python dispatch, thread synchronisation), and small enough that a block's scores stay in cache between the
    passes over them. Measured fwd+bwd at T=4096, 8 heads, fp32: (256, 256) 1295 ms, (512, 512) 1420 ms,
    (1024, 512) 1467 ms, (128, 256) 1421 ms. The buffers stay a fixed size, independent of ``T``.
    """
    bh = max(batch_heads, 1)
    bk = min(max(tk, 1), 256, max(64, _BLOCK_ELEMENTS // (bh * 64) // 64 * 64))
    bq = min(max(tq, 1), 256, max(64, _BLOCK_ELEMENTS // (bh * bk) // 64 * 64))
    return bq, bk


class _Plan:
    """Everything about one call that the forward and the backward share: block sizes, masks, ALiBi and T5 pieces."""

    def __init__(self, q: Tensor, k: Tensor, causal: bool, key_padding_mask: Tensor | None,
                 alibi_slopes: Tensor | None, rel_bias: Tensor | None, rel_bucket: BucketFn | None, scale: float,
                 block_size: int | tuple[int, int] | None, key_bias: Tensor | None = None) -> None:
        b, h, tq, d = q.shape
        tk = k.shape[2]
        self.b, self.h, self.tq, self.tk, self.d = b, h, tq, tk, d
        self.causal = causal
        self.scale = scale
        self.offset = tk - tq  # absolute position of query 0
        self.low = q.dtype in _LOW_PRECISION
        self.stat_dtype = torch.float32 if self.low else q.dtype
        if block_size is None:
            self.bq, self.bk = default_block_size(tq, tk, b * h)
        elif isinstance(block_size, int):
            self.bq = self.bk = block_size
        else:
            self.bq, self.bk = block_size
        if self.bq <= 0 or self.bk <= 0:
            raise ValueError(f"block_size must be positive, got {block_size!r}")
        sd = self.stat_dtype
        dev = self.device = q.device
        # padding (and a per-key bias: ToMe's log size) as an additive column bias, one row per (batch, head):
        # [B·H, 1, Tk], -inf at padding
        self.pad = None
        if key_padding_mask is not None or key_bias is not None:
            pad = torch.zeros(b, 1, 1, tk, dtype=sd, device=dev) if key_bias is None else \
                key_bias.detach().to(device=dev, dtype=sd)[:, None, None, :].clone()
            if key_padding_mask is not None:
                pad.masked_fill_(~key_padding_mask[:, None, None], -math.inf)
            self.pad = pad.expand(b, h, 1, tk).reshape(b * h, 1, tk)
        self.slopes = None  # [B·H] ALiBi slopes, one per (batch, head)
        if alibi_slopes is not None:
            self.slopes = alibi_slopes.to(device=dev, dtype=sd).repeat(b)
            self.slopes_h = alibi_slopes.to(device=dev, dtype=sd).view(1, h, 1, 1)
        self.rel = None  # the T5 bucket ids of this call's relative positions
        self._diag_limit = 4
        if rel_bias is not None:
            self.rel = RelativeBuckets(rel_bucket, rel_bias.shape[0], tq, tk, dev)
            table = rel_bias.detach().to(device=dev, dtype=sd).t()  # [H, num_buckets]
            self.rel_table = table.contiguous()
            self.rel_rows = table.repeat(b, 1)  # [B·H, num_buckets]: a one-bucket block's bias as a row term
            # every diagonal within reach of the buckets' exact range recurs in each query block: keep them all
            # while the cached [H, bq, bk] biases stay within a few score buffers
            self._diag_limit = max(4, 4 * _BLOCK_ELEMENTS // (h * self.bq * self.bk))
        # a row that sees no key at all needs NaN-safe statistics
        self.may_empty = key_padding_mask is not None or (causal and tq > tk)
        self._diag_cache: dict[tuple[int, int, int], tuple[Tensor | None, ...]] = {}
        self._col_cache: dict[tuple[str, int], Tensor] = {}

    def exp_(self, s: Tensor) -> Tensor:
        """In-place ``exp`` of shifted scores (all <= 0 up to rounding). Where no row can be empty, scores are first
        floored at ``_EXP_FLOOR``: ``exp`` of very negative inputs (far keys under ALiBi, masked entries) takes a
        slow path on CPU, ~15x slower, and a floor of -80 adds at most ``T·e^-80 ≈ 1e-31`` to a row sum that is
        >= 1 — below fp32 rounding. Rows that may see no key keep exact zeros (no floor), so they output 0."""
        if not self.may_empty and s.dtype == torch.float32:
            s.clamp_(min=_EXP_FLOOR)
        return s.exp_()

    # -- block iteration -----------------------------------------------------------------------------------------
    def q_blocks(self):
        for qs in range(0, self.tq, self.bq):
            yield qs, min(qs + self.bq, self.tq)

    def k_blocks(self, qs: int, qe: int):
        """Key blocks a query block needs, with their kind: ``full`` (no mask or bias beyond padding),
        ``left``/``right`` (ALiBi, all keys before/after all queries), ``const`` (T5, one bucket for the whole
        block) or ``diag`` (needs the dense block bias)."""
        end = self.tk
        first_pos, last_pos = self.offset + qs, self.offset + qe - 1
        if self.causal:
            end = min(end, last_pos + 1)  # keys after the last query are never seen
        for ks in range(0, max(end, 0), self.bk):
            ke = min(ks + self.bk, end)
            if self.rel is not None:
                straddles = self.causal and ke - 1 > first_pos
                one = None if straddles else self.rel.constant(ks - first_pos, qe - qs, ke - ks)
                kind = "diag" if one is None else "const"
            elif self.slopes is None:
                kind = "diag" if self.causal and ke - 1 > first_pos else "full"
            elif ke - 1 <= first_pos:
                kind = "left"
            elif ks >= last_pos and not self.causal:
                kind = "right"
            else:
                kind = "diag"
            yield ks, ke, kind

    # -- biases ----------------------------------------------------------------------------------------------------
    def _alibi_col(self, side: str, n: int) -> Tensor:
        """``[B·H, 1, n]``: ``slope·(j − (n−1))`` for ``left`` (0 at the key nearest the queries), ``−slope·j`` for
        ``right``."""
        key = (side, n)
        t = self._col_cache.get(key)
        if t is None:
            j = torch.arange(n, device=self.slopes.device, dtype=self.slopes.dtype)
            t = self.slopes[:, None, None] * ((j - (n - 1)) if side == "left" else -j)
            self._col_cache[key] = t
        return t

    def _diag_pieces(self, qs: int, qe: int, ks: int, ke: int) -> tuple[Tensor | None, ...]:
        """The dense pieces of a block that needs them: ``(neg_dist [nq, nk], mask [nq, nk], rel [H, nq, nk],
        rel_ids [nq, nk])``, each ``None`` when unused. ALiBi's ``−|p_q − p_k|``, the causal ``-inf`` mask, and the
        T5 bias gathered from the table (with the causal mask folded in, so it is one add) and its bucket ids (for
        the backward's scatter). Cached per diagonal offset: a handful of distinct offsets per call."""
        nq, nk = qe - qs, ke - ks
        key = (nq, nk, self.offset + qs - ks)
        pieces = self._diag_cache.get(key)
        if pieces is None:
            pq = torch.arange(qs, qe, device=self.device) + self.offset
            pk = torch.arange(ks, ke, device=self.device)
            rel = pk[None, :] - pq[:, None]  # [nq, nk], key minus query
            neg_dist = -rel.abs().to(self.stat_dtype) if self.slopes is not None else None
            mask = rel_block = rel_ids = None
            if self.causal:
                mask = torch.zeros(nq, nk, dtype=self.stat_dtype, device=self.device).masked_fill_(rel > 0, -math.inf)
            if self.rel is not None:
                rel_ids = self.rel.block(ks - self.offset - qs, nq, nk)
                rel_block = self.rel_table[:, rel_ids]  # [H, nq, nk]
                if mask is not None:
                    rel_block.add_(mask)
                    mask = None
            if len(self._diag_cache) >= self._diag_limit:
                self._diag_cache.pop(next(iter(self._diag_cache)))
            pieces = self._diag_cache[key] = (neg_dist, mask, rel_block, rel_ids)
        return pieces

    def _add_diag_bias(self, s: Tensor, qs: int, qe: int, ks: int, ke: int) -> None:
        """Add the dense bias of a block that straddles the diagonal (or, under T5, spans several buckets) to
        ``s [B·H, nq, nk]``: ALiBi as one fused ``s += slope_h · (−|p_q − p_k|)``, the T5 bias, the causal mask."""
        neg_dist, mask, rel_block, _ = self._diag_pieces(qs, qe, ks, ke)
        s4 = s.view(self.b, self.h, qe - qs, ke - ks)
        if neg_dist is not None:
            s4.addcmul_(self.slopes_h, neg_dist)
        if rel_block is not None:
            s4.add_(rel_block)
        if mask is not None:
            s4.add_(mask)

    def rel_grad_(self, grad: Tensor, ds: Tensor, qs: int, qe: int, ks: int, ke: int, kind: str) -> None:
        """Accumulate the T5 table's gradient of one block into ``grad [B·H, num_buckets]``: the block's ``dS``
        ``[B·H, nq, nk]`` (the gradient of the biased scores) summed by bucket — one column for a one-bucket block,
        a scatter-add by the block's bucket ids otherwise. Masked entries have ``dS = 0`` and add nothing."""
        nq, nk = qe - qs, ke - ks
        if kind == "const":
            one = self.rel.constant(ks - self.offset - qs, nq, nk)
            grad[:, one].add_(ds.sum((1, 2)))
        else:
            ids = self._diag_pieces(qs, qe, ks, ke)[3]
            grad.index_add_(1, ids.view(-1), ds.view(ds.shape[0], nq * nk))

    def scores(self, q3: Tensor, k3: Tensor, qs: int, qe: int, ks: int, ke: int, kind: str, out: Tensor,
               bufs: "_Buffers", minus_row: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The biased score block ``S [B·H, nq, nk]`` written into ``out`` (stat dtype), and the row term
        ``r [B·H, nq | 1]`` (ALiBi's, or a one-bucket T5 block's bias) still to be added to every entry of a row
        (``None`` if zero).

        With ``minus_row [B·H, nq]`` the block is ``S + r − minus_row`` instead (the backward passes the
        log-sum-exp, so that ``exp`` of the block is ``P``), and ``r`` is returned as ``None``.
        """
        nq, nk = qe - qs, ke - ks
        qb, kt = q3[:, qs:qe], k3[:, ks:ke].transpose(1, 2)
        col, r = None, None
        if kind in ("left", "right"):
            col = self._alibi_col(kind, nk)
            pq = torch.arange(qs + self.offset, qe + self.offset, device=q3.device, dtype=self.stat_dtype)
            # left: bias = slope·(p_k − k_last) − slope·(p_q − k_last); right: −slope·(p_k − ks) − slope·(ks − p_q)
            ref = ke - 1 if kind == "left" else ks
            r = self.slopes[:, None] * ((ref - pq) if kind == "left" else (pq - ref))
        elif kind == "const":
            one = self.rel.constant(ks - self.offset - qs, nq, nk)
            r = self.rel_rows[:, one:one + 1]  # [B·H, 1]
        if self.pad is not None:
            p = self.pad[:, :, ks:ke]
            col = p if col is None else col + p
        row = None
        if minus_row is not None:
            row = -minus_row if r is None else r - minus_row
            row, r = row[..., None], None
        # the additive input of the score matmul: [B·H, nq | 1, nk | 1] or None
        if col is not None and row is not None:
            bias = torch.add(col, row, out=out)
        else:
            bias = col if col is not None else row
        if self.low:  # bf16/fp16 matmul, then one fused pass to fp32: S = bias + scale·(q kᵀ)
            s_low = torch.bmm(qb, kt, out=bufs.get("s_low", (q3.shape[0], nq, nk), q3.dtype))
            if bias is None:
                torch.mul(s_low, self.scale, out=out)
            else:
                torch.add(bias, s_low, alpha=self.scale, out=out)
        elif bias is None:
            torch.baddbmm(out, qb, kt, beta=0.0, alpha=self.scale, out=out)
        elif bias is out:
            out.baddbmm_(qb, kt, alpha=self.scale)
        else:
            # a broadcast ([B·H, 1, nk] / [B·H, nq, 1]) input sends baddbmm down a per-batch slow path on CPU:
            # one plain batched matmul, then one broadcast add, is several times faster
            torch.baddbmm(out, qb, kt, beta=0.0, alpha=self.scale, out=out).add_(bias)
        if kind == "diag":
            self._add_diag_bias(out, qs, qe, ks, ke)
        return out, r


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, alibi_slopes: Tensor | None,
           rel_bias: Tensor | None, rel_bucket: BucketFn | None, scale: float, key_bias: Tensor | None = None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, T, d], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(need k == v == [B, H, Tk, d] with q's B, H, d)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_padding_mask is not None and (key_padding_mask.shape != (k.shape[0], k.shape[2])
                                         or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be bool [B, Tk] = {[k.shape[0], k.shape[2]]}, got "
                         f"{key_padding_mask.dtype} {list(key_padding_mask.shape)}")
    if alibi_slopes is not None and alibi_slopes.shape != (q.shape[1],):
        raise ValueError(f"alibi_slopes must be [H] = [{q.shape[1]}], got {list(alibi_slopes.shape)}")
    if key_bias is not None:
        if key_bias.shape != (k.shape[0], k.shape[2]) or not key_bias.is_floating_point():
            raise ValueError(f"key_bias must be floating [B, Tk] = {[k.shape[0], k.shape[2]]}, got "
                             f"{key_bias.dtype} {list(key_bias.shape)}")
        if key_bias.requires_grad:
            raise ValueError("key_bias is a constant (ToMe's log token sizes): it takes no gradient")
    if (rel_bias is None) != (rel_bucket is None):
        raise ValueError("rel_bias and rel_bucket come together: the table [num_buckets, H] and its bucket function")
    if rel_bias is not None:
        if rel_bias.dim() != 2 or rel_bias.shape[1] != q.shape[1] or not rel_bias.is_floating_point():
            raise ValueError(f"rel_bias must be a floating [num_buckets, H={q.shape[1]}] table, got "
                             f"{rel_bias.dtype} {list(rel_bias.shape)}")
        if alibi_slopes is not None:
            raise ValueError("alibi_slopes and rel_bias: one relative position bias at a time")
        if scale == 0.0:  # the table's gradient is recovered from dS·scale
            raise ValueError("scale must be nonzero with rel_bias")


class _Buffers:
    """Contiguous scratch tensors reused across blocks, one per (name, shape, dtype). Contiguity matters: a batched
    matmul whose output is a strided view falls back to one matmul per batch·head."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        key = (name, shape, dtype)
        t = self._pool.get(key)
        if t is None:
            t = self._pool[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return t


# lazy rescaling: keep a row's running max until a block exceeds it by more than this (exp(8) ≈ 3e3 cannot
# overflow fp32 sums), so most blocks skip rescaling the output accumulator; exact either way
_RESCALE_THRESHOLD = 8.0
#: devices where a block's "did any row max move" is read on the host to skip the rescale (see _forward)
LAZY_RESCALE_DEVICES: tuple[str, ...] = ("cpu",)


def _denormals_flushed() -> bool:
    """Whether this thread already flushes denormals (torch has no getter for the flag: a denormal input reads as
    zero when it does)."""
    return bool(torch.tensor(1e-39, dtype=torch.float32).mul(1.0) == 0)


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """Flush denormal floats to zero while the kernel runs, on CPU only. Far-away keys under ALiBi give ``exp``
    results below fp32's smallest normal (1.2e-38); CPUs handle those in microcode. ``_Plan.exp_`` floors the
    scores where no row can be empty, which removes them there; rows that may be empty (padding, Tq > Tk causal)
    keep exact zeros and so no floor, and the flag covers them. Values that small are below fp32 rounding of every
    row sum (>= 1), so flushing changes no result beyond rounding.

    The flag is a CPU thread's floating-point mode (MXCSR/FPCR), not a device setting: other devices skip it. A
    caller that already flushes keeps its setting; otherwise it is switched off again afterwards."""
    if device.type != "cpu" or _denormals_flushed() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _forward(plan: _Plan, q3: Tensor, k3: Tensor, v3: Tensor) -> tuple[Tensor, Tensor]:
    """q3 ``[B·H, Tq, d]``, k3/v3 ``[B·H, Tk, d]`` -> (output ``[B·H, Tq, d]``, lse ``[B·H, Tq]``), both in the
    stat dtype (fp32 for bf16/fp16 inputs)."""
    bh, tq, d = q3.shape
    sd, dev = plan.stat_dtype, q3.device
    bufs = _Buffers(dev)
    zero = torch.zeros((), dtype=sd, device=dev)
    # low precision: the output is accumulated in fp32 and kept so, for D = rowsum(dO ∘ O) in the backward
    out = torch.empty(q3.shape, dtype=sd, device=dev)
    lse = torch.empty(bh, tq, dtype=sd, device=dev)
    for qs, qe in plan.q_blocks():
        nq = qe - qs
        acc = bufs.get("acc", (bh, nq, d), sd)  # unnormalised output of this query block
        m = l = None
        for ks, ke, kind in plan.k_blocks(qs, qe):
            nk = ke - ks
            s, r = plan.scores(q3, k3, qs, qe, ks, ke, kind, bufs.get("s", (bh, nq, nk), sd), bufs)
            bm = s.amax(-1)  # [B·H, nq]
            if r is not None:
                bm.add_(r)
            rescale = False
            if m is None:
                m = bm
            else:
                m_new = torch.where(bm > m + _RESCALE_THRESHOLD, bm, m)
                # skipping a block's rescale needs its answer on the host: free on CPU, a stall per key block on
                # an accelerator, which rescales every block instead (alpha = 1 where the max stayed: exact)
                rescale = bool((m_new != m).any()) if dev.type in LAZY_RESCALE_DEVICES else True
                if rescale:
                    alpha = (m - m_new).exp_() if not plan.may_empty else \
                        (m - torch.where(m_new == -math.inf, zero, m_new)).exp_()
                    m = m_new
            m_sub = torch.where(m == -math.inf, zero, m) if plan.may_empty else m
            shift = m_sub if r is None else m_sub - r
            p = plan.exp_(s.sub_(shift[..., None]))  # unnormalised probabilities, [B·H, nq, nk]
            first = l is None
            if first:
                l = p.sum(-1)
            elif rescale:
                l.mul_(alpha).add_(p.sum(-1))
                acc.mul_(alpha[..., None])
            else:
                l.add_(p.sum(-1))
            vb = v3[:, ks:ke]
            if plan.low:
                pv = torch.bmm(bufs.get("p_low", (bh, nq, nk), q3.dtype).copy_(p), vb,
                               out=bufs.get("pv", (bh, nq, d), q3.dtype))
                if first:
                    acc.copy_(pv)
                else:
                    acc.add_(pv)
            elif first:
                torch.bmm(p, vb, out=acc)
            else:
                acc.baddbmm_(p, vb)
        if l is None:  # causal queries before the first key see nothing
            out[:, qs:qe] = 0.0
            lse[:, qs:qe] = -math.inf
            continue
        if plan.may_empty:
            empty = l == 0
            l = l.masked_fill(empty, 1.0)
        torch.div(acc, l[..., None], out=acc)
        out[:, qs:qe] = acc
        lse[:, qs:qe] = m + l.log()
        if plan.may_empty:
            lse[:, qs:qe].masked_fill_(empty, -math.inf)
    return out, lse


def _backward(plan: _Plan, q3: Tensor, k3: Tensor, v3: Tensor, o3: Tensor, lse: Tensor, do3: Tensor,
              rel_grad: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """FlashAttention-2 backward (Dao 2023, Alg. 2) with the query blocks outermost; returns dq, dk, dv and, when
    ``rel_grad``, the gradient of the T5 table ``[num_buckets, H]`` in the stat dtype (else ``None``).

    Per block pair: ``P = exp(S − lse)``, ``dS = P ∘ (dP − D)·scale`` with ``dP − D`` from one matmul whose additive
    input is ``−D``; ``P`` and ``dS`` sit in one ``[2, B·H, nq, nk]`` buffer so that ``dV = Pᵀ dO`` and
    ``dK = dSᵀ Q`` are a single batched matmul against ``[dO; Q]``.
    """
    bh, tq, d = q3.shape
    sd, dev = plan.stat_dtype, q3.device
    bufs = _Buffers(dev)
    scale = plan.scale
    # −scale·D_i with D_i = rowsum(dO ∘ O) = Σ_j P_ij dP_ij, [B·H, Tq]
    neg_delta = (do3 * o3).sum(-1, dtype=sd).mul_(-scale)
    # a row that saw no key has lse = -inf; +inf makes its recomputed P exactly 0 (and its gradients 0)
    lse = lse.masked_fill(lse == -math.inf, math.inf) if plan.may_empty else lse
    dq = torch.empty(q3.shape, dtype=q3.dtype, device=dev)
    # separate tensors, not views of one [2, ...] buffer: autograd would copy a gradient that shares storage
    dv, dk = (torch.zeros(k3.shape, dtype=sd, device=dev) for _ in range(2))
    # dP in fp32 even for bf16 inputs: dS = P ∘ (dP − D) cancels, and a bf16-rounded dP would not match D
    do32, v32 = (do3.to(sd), v3.to(sd)) if plan.low else (do3, v3)
    # per (batch, head) rows, summed over the batch once at the end
    drel = None if plan.rel is None or not rel_grad else torch.zeros(bh, plan.rel_table.shape[1], dtype=sd, device=dev)
    for qs, qe in plan.q_blocks():
        nq = qe - qs
        rhs = bufs.get("rhs", (2, bh, nq, d), q3.dtype)  # [dO; Q] of this query block
        rhs[0].copy_(do3[:, qs:qe])
        rhs[1].copy_(q3[:, qs:qe])
        rhs2 = rhs.view(2 * bh, nq, d)
        lse_b, nd_b = lse[:, qs:qe], neg_delta[:, qs:qe, None]
        dq_acc = bufs.get("dq", (bh, nq, d), sd)
        dq_acc.zero_()
        for ks, ke, kind in plan.k_blocks(qs, qe):
            nk = ke - ks
            kb = k3[:, ks:ke]
            pair = bufs.get("pair", (2, bh, nq, nk), sd)  # [P; dS]
            p = pair[0]
            plan.scores(q3, k3, qs, qe, ks, ke, kind, p, bufs, minus_row=lse_b)  # S − lse, into p
            plan.exp_(p)
            ds = torch.baddbmm(nd_b, do32[:, qs:qe], v32[:, ks:ke].transpose(1, 2), alpha=scale, out=pair[1])
            ds.mul_(p)
            if drel is not None:
                plan.rel_grad_(drel, ds, qs, qe, ks, ke, kind)
            if plan.low:
                pair_low = bufs.get("pair_low", (2, bh, nq, nk), q3.dtype).copy_(pair)
                ds_mm, pair_mm = pair_low[1], pair_low.view(2 * bh, nq, nk)
            else:
                ds_mm, pair_mm = ds, pair.view(2 * bh, nq, nk)
            part = torch.bmm(pair_mm.transpose(1, 2), rhs2, out=bufs.get("part", (2 * bh, nk, d), q3.dtype))
            part = part.view(2, bh, nk, d)
            dv[:, ks:ke].add_(part[0])
            dk[:, ks:ke].add_(part[1])
            if plan.low:
                dq_acc.add_(torch.bmm(ds_mm, kb, out=bufs.get("q_part", (bh, nq, d), q3.dtype)))
            else:
                dq_acc.baddbmm_(ds_mm, kb)
        dq[:, qs:qe] = dq_acc
    if drel is not None:  # ds carried the score scale: the bias enters the scores unscaled
        drel = drel.view(plan.b, plan.h, -1).sum(0).t().div_(scale)
    return dq, dk.to(k3.dtype), dv.to(v3.dtype), drel


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, key_padding_mask, alibi_slopes, rel_bias, rel_bucket, scale, block_size,
                key_bias):
        b, h, tq, d = q.shape
        tk = k.shape[2]
        plan = _Plan(q, k, causal, key_padding_mask, alibi_slopes, rel_bias, rel_bucket, scale, block_size, key_bias)
        # views where the layout allows (B = 1 views of a fused QKV projection): batched matmuls take a row stride
        # of H·d as it is, and copies would add 3·T·H·d elements to the peak memory
        q3 = q.reshape(b * h, tq, d)
        k3 = k.reshape(b * h, tk, d)
        v3 = v.reshape(b * h, tk, d)
        with flush_denormals(q.device):
            out3, lse = _forward(plan, q3, k3, v3)
        ctx.save_for_backward(q3, k3, v3, out3, lse)
        if plan.low:
            out3 = out3.to(q.dtype)
        ctx.plan = plan
        ctx.shapes = (q.shape, k.shape)
        ctx.rel_dtype = None if rel_bias is None else rel_bias.dtype
        return out3.view(b, h, tq, d)

    @staticmethod
    def backward(ctx, do):
        q3, k3, v3, out3, lse = ctx.saved_tensors
        qshape, kshape = ctx.shapes
        plan = ctx.plan
        do3 = do.to(q3.dtype).reshape(q3.shape)
        with flush_denormals(q3.device):
            dq, dk, dv, drel = _backward(plan, q3, k3, v3, out3, lse, do3, rel_grad=ctx.needs_input_grad[6])
        if drel is not None:
            drel = drel.to(ctx.rel_dtype)
        return dq.view(qshape), dk.view(kshape), dv.view(kshape), None, None, None, drel, None, None, None, None


@torch.compiler.disable  # a hand-written kernel: runs eagerly inside a compiled model (docs/architecture.md)
def tiled_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None,
                    alibi_slopes: Tensor | None = None, rel_bias: Tensor | None = None,
                    rel_bucket: BucketFn | None = None, scale: float | None = None,
                    block_size: int | tuple[int, int] | None = None, key_bias: Tensor | None = None) -> Tensor:
    """Exact softmax attention in ``O(T)`` extra memory, forward and backward (FlashAttention / FlashAttention-2).

    Same result and conventions as ``naive.attention`` (queries end-aligned at positions ``Tk − Tq + i``; a query
    that sees no key outputs zeros and gets zero gradients).

    Args:
        q: ``[B, H, Tq, d]``; k, v: ``[B, H, Tk, d]``; float64, float32, bfloat16 or float16, all the same dtype.
        causal: query at position p sees keys at positions <= p.
        key_padding_mask: ``[B, Tk]`` bool, True = real key.
        alibi_slopes: ``[H]``; adds ``−slope_h·|p_q − p_k|`` to the scores (ALiBi, Press et al. 2022); no gradient.
        rel_bias: ``[num_buckets, H]`` learned table; adds ``rel_bias[rel_bucket(p_k − p_q), h]`` to the scores
            (T5, Raffel et al. 2020, Sec. 2.1), computed per block; differentiable. Not together with ALiBi.
        rel_bucket: maps int64 relative positions ``p_k − p_q`` to int64 bucket ids of the same shape, e.g.
            ``functools.partial(nn.positions.t5_bucket, bidirectional=..., num_buckets=..., max_distance=...)``.
        scale: score scale, default ``1/sqrt(d)``.
        block_size: rows per query block and key block (an int for both, or ``(block_q, block_k)``); default
            ``default_block_size(Tq, Tk, B·H)``.
        key_bias: ``[B, Tk]`` floating, added to every query's score of key j (ToMe's proportional attention,
            ``+ log s_j``: Bolya et al. 2023, Eq. 1); a constant (no gradient), folded into the padding column bias.

    Returns:
        ``[B, H, Tq, d]`` in the dtype of ``q``. Differentiable in ``q, k, v`` and ``rel_bias`` (its gradient is
        accumulated in the stat dtype and returned in the table's dtype).

    Memory: saves ``q, k, v``, the output (fp32 for bf16/fp16 inputs: the backward's ``D = rowsum(dO ∘ O)`` needs
    the unrounded output) and the log-sum-exp (``[B, H, Tq]``, fp32 or fp64); temporaries are three
    ``[B·H, block_q, block_k]`` buffers plus ``O((Tq + Tk)·B·H·d)`` accumulators (with ``rel_bias``: the bucket ids
    of the ``Tq + Tk − 1`` relative positions and a few cached ``[H, block_q, block_k]`` bias blocks near the
    diagonal). With bf16/fp16 inputs the matmuls
    run in that dtype while the running max, sum, log-sum-exp and the output/gradient accumulators are fp32.

    Raises:
        ValueError: on inconsistent shapes or dtypes, a mask that is not bool ``[B, Tk]``, a ``key_bias`` that is
        not floating ``[B, Tk]`` or requires a gradient, slopes that are not
        ``[H]``, a table that is not ``[num_buckets, H]`` (or comes without its bucket function, or with ALiBi), a
        bucket function giving ids outside the table, or a non-positive block size.

    Source: Dao et al. 2022, "FlashAttention", Alg. 1 (forward) and Alg. 4 (backward); Dao 2023,
    "FlashAttention-2", Alg. 1 and Alg. 2.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    _check(q, k, v, key_padding_mask, alibi_slopes, rel_bias, rel_bucket, scale, key_bias)
    return _TiledAttention.apply(q, k, v, causal, key_padding_mask, alibi_slopes, rel_bias, rel_bucket, scale,
                                 block_size, key_bias)
