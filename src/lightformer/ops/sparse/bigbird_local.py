"""BigBird-ITC attention as one autograd function: the global rows, and the local query blocks with their window,
global and random keys under one softmax.

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", App. D (the blocked ITC form). A local query
block n (every block after the ``num_global`` global ones) sees ``S = G + W + r·Bq`` key columns, in the order of
``bigbird.local_pattern``:

* ``G = num_global·Bq`` global keys (positions ``0 .. G-1``), the same for every block;
* ``W = 3·Bq`` window keys, blocks ``n-1, n, n+1`` (causal: ``2·Bq``, blocks ``n-1, n``, the own block masked
  ``j <= i``);
* ``r·Bq`` random keys, the ``random_blocks`` of the block.

Per group of blocks (about ``2^22`` scores over all batches and heads), the ``S`` key and value rows of every block
(all of them whole blocks) are copied side by side into two reused ``[B·H, g, S, d]`` buffers (``LocalPlan.gather``,
one ``index_select``), so that per (batch, head) the scores ``Q_blk·K_Sᵀ`` and the output ``P·V_S`` are one
batched matmul each. For the whole group: one add of the column bias (``-inf`` where a column holds no key: sequence
edges, a window block that is also global, a missing random block, padding), torch's fused softmax in place. The
probabilities are kept for the backward (O(T·S) in all, like the sliding-window kernel of ``ops.local.blocked``);
the backward is the softmax-attention backward per block (FlashAttention, Dao et al. 2022, Alg. 2):
``dS = P ⊙ (dP − rowsum(P ⊙ dP))`` by torch's fused softmax backward, ``dQ = dS·K_S``, and the row gradients
``dSᵀ·Q``, ``Pᵀ·dO`` of every block scattered back onto the key blocks (``LocalPlan.scatter_add``, one
``index_add_``).

Time O(B·H·T·S·d), memory O(B·H·T·(S + d)). Dtypes: float64, float32, bfloat16 (and float16). Every matmul runs in
the input dtype, and so do the scores, P (kept) and dS: with 16-bit inputs torch's fused softmax and softmax
backward compute in float32 inside and round their output once, as the 16-bit oracle does (no widening and
narrowing passes); the per-block ``dK``/``dV`` products are summed over blocks in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..amp import no_autocast
# _GROUP_SCORES: scores per group of blocks (all batches and heads), the sliding-window kernel's (16 MiB in float32)
from ..local.blocked import _GROUP_SCORES, _LOW_PRECISION, _lead, _padded
from ..softmax.inplace import softmax_, softmax_backward_
from .longformer import _global_rows_backward, _global_rows_forward


class LocalPlan:
    """Sizes, column biases and random-block indices of one call (independent of the values of q, k, v).

    Args:
        b, h, t: batch, heads, sequence length.
        block_size: Bq.
        key_index: ``[Bm, nl, S]`` key positions of the ``nl`` local query blocks (``-1`` = none), from
            ``bigbird.local_pattern``; ``band``: its ``[Bq, S]`` causal band or None.
        random: ``[Bm, nb, r]`` random key blocks (``-1`` = none).
        num_global: global blocks ``gb`` (``G = gb·Bq`` < t).
        causal: the window is blocks ``n-1, n`` and the own block hides ``j > i``.
        key_padding_mask: ``[B, T]`` bool or None.
        dtype: the dtype of q, k, v (the biases are added to scores in it).
    """

    def __init__(self, b: int, h: int, t: int, block_size: int, key_index: Tensor, band: Tensor | None,
                 random: Tensor, num_global: int, causal: bool, key_padding_mask: Tensor | None,
                 dtype: torch.dtype):
        bq = block_size
        self.b, self.h, self.t, self.bq, self.causal = b, h, t, bq, causal
        self.nb = -(-t // bq)
        self.gb = num_global
        self.nl = self.nb - num_global
        self.gk = num_global * bq
        self.w = (2 if causal else 3) * bq
        self.span = key_index.shape[-1]
        self.lk = (self.nb + (1 if causal else 2)) * bq  # padded key rows: Bq zero rows, then positions 0 ..
        dev = key_index.device
        valid = key_index >= 0  # [Bm, nl, S]
        if key_padding_mask is not None:
            flat = key_index.clamp_min(0).flatten(1)
            real = (key_padding_mask[:, flat[0]] if key_index.shape[0] == 1
                    else torch.gather(key_padding_mask, 1, flat))
            valid = valid & real.view(b, self.nl, self.span)
        self.cols = torch.zeros(valid.shape, dtype=dtype, device=dev).masked_fill_(~valid, float("-inf"))
        self.own = None  # causal: the own block's [Bq, Bq] upper triangle hidden
        band_f = torch.ones(bq, self.span, device=dev) if band is None else band.to(torch.float32)
        if causal:
            self.own = torch.zeros(bq, bq, dtype=dtype, device=dev).masked_fill_(
                torch.ones(bq, bq, dtype=torch.bool, device=dev).triu_(1), float("-inf"))
        empty = torch.einsum("mns,as->mna", valid.to(torch.float32), band_f) == 0  # [Bm, nl, Bq]: no key
        self.empty = empty if bool(empty.any()) else None
        # the padded key blocks of every local block, in column order (padded block i = positions of block i - 1;
        # block 0 and the last are zeros): global 1 .. gb, window n .. n + 2 (n + 1 causal), random + 1 (-1 -> 0)
        n = torch.arange(num_global, self.nb, device=dev)[:, None]
        glob = torch.arange(1, num_global + 1, device=dev).expand(self.nl, num_global)
        win = n + torch.arange(self.w // bq, device=dev)
        rand = random[:, num_global:] + 1
        bm = rand.shape[0]
        self.blocks = torch.cat([glob.expand(bm, -1, -1), win.expand(bm, -1, -1), rand], dim=-1)  # [Bm, nl, S/Bq]
        self.group = max(1, min(self.nl, _GROUP_SCORES // max(1, b * h * bq * self.span)))

    def groups(self):
        """``(n0, n1)``: the local query blocks processed together, for every batch and head."""
        for n0 in range(0, self.nl, self.group):
            yield n0, min(self.nl, n0 + self.group)

    def _block_index(self, n0: int, n1: int) -> list[Tensor]:
        """Per (batch, head) row: the padded key blocks of local blocks ``[n0, n1)``, ``[g·S/Bq]``."""
        idx = self.blocks[:, n0:n1].reshape(self.blocks.shape[0], -1)
        return [idx[j // self.h if idx.shape[0] > 1 else 0] for j in range(self.b * self.h)]

    def gather(self, rows: Tensor, n0: int, n1: int, out: Tensor) -> Tensor:
        """The ``S`` key (or value) rows of every local block in ``[n0, n1)``, for every (batch, head): padded rows
        ``[B·H, L, d]`` -> ``out [B·H, g, S, d]`` (a reused buffer), the global, window and random blocks side by
        side, so that each block's scores and products are one matmul (measured ~1.5x faster than three matmuls
        over the column ranges, the copy included). One ``index_select`` of whole blocks per (batch, head), on
        dim 0 of a ``[blocks, Bq·d]`` view: ~2x faster than one over dim 1 of all heads."""
        bh, length, d = rows.shape
        src = rows.view(bh, length // self.bq, self.bq * d)
        dst = out.view(bh, -1, self.bq * d)
        for j, idx in enumerate(self._block_index(n0, n1)):
            torch.index_select(src[j], 0, idx, out=dst[j])
        return out

    def scatter_add(self, acc: Tensor, parts: Tensor, n0: int, n1: int) -> None:
        """``acc [B·H, L, d]`` += ``parts [B·H, g, S, d]``, the gradients of the gathered rows (the adjoint of
        ``gather``: one ``index_add_`` of whole blocks per (batch, head), repeated blocks summed)."""
        bh, length, d = acc.shape
        dst = acc.view(bh, length // self.bq, self.bq * d)
        src = parts.view(bh, -1, self.bq * d)
        for j, idx in enumerate(self._block_index(n0, n1)):
            dst[j].index_add_(0, idx, src[j])


class _BigBird(torch.autograd.Function):
    """The whole of BigBird-ITC attention: the global query rows (``longformer``'s global-row helpers) and the local
    blocks, so that each gradient is written once (no zero-filled slice gradients, no sums of partial ones)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: LocalPlan, scale: float, hide: Tensor | None):
        b, h, t, d = q.shape
        bh, bq, nl, span, gk = b * h, plan.bq, plan.nl, plan.span, plan.gk
        out = q.new_empty(b, h, gk + nl * bq, d)  # rows gk .. : the local blocks, padded to whole blocks
        ctx.global_probs = _global_rows_forward(q, k, v, hide, gk, plan.causal, scale, out[:, :, :gk]) if gk else None
        qp = _padded(q[:, :, gk:], 0, nl * bq, scale).view(bh, nl, bq, d)
        kp = _padded(k, bq, plan.lk).view(bh, plan.lk, d)
        vp = _padded(v, bq, plan.lk).view(bh, plan.lk, d)
        op = out[:, :, gk:].view(bh, nl, bq, d)
        keep = any(ctx.needs_input_grad[:3])
        probs, buf = [], None  # P is kept per group for the backward; without backward one buffer is reused
        rows = bh * plan.group * span * d
        kg_buf, vg_buf = q.new_empty(rows), q.new_empty(rows)
        for n0, n1 in plan.groups():
            g = n1 - n0
            if keep or buf is None:
                buf = q.new_empty(bh * g * bq * span if keep else bh * plan.group * bq * span)
            s = _lead(buf, bh, g, bq, span)
            kg = plan.gather(kp, n0, n1, _lead(kg_buf, bh, g, span, d))
            vg = plan.gather(vp, n0, n1, _lead(vg_buf, bh, g, span, d))
            for j in range(bh):
                torch.bmm(qp[j, n0:n1], kg[j].transpose(1, 2), out=s[j])
            _mask_(s, plan, n0, n1)
            softmax_(s)  # P (16-bit inputs: float32 inside the kernel, rounded once)
            if keep:
                probs.append(s)
            for j in range(bh):
                torch.bmm(s[j], vg[j], out=op[j, n0:n1])
        if plan.empty is not None:
            op.view(b, h, nl, bq, d).masked_fill_(plan.empty[:, None, :, :, None], 0.0)
        if keep:
            # k, v are read back from their padded copies; of q only the global rows (small) are kept, so the
            # caller's q, k, v (views of the fused QKV projection) need not outlive the forward
            ctx.save_for_backward(q[:, :, :gk].contiguous(), qp, kp, vp, *probs)
        ctx.plan, ctx.scale = plan, scale
        return out[:, :, :t]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q_glob, qp, kp, vp, *probs = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        b, h, bq, nl, span, gk, t = plan.b, plan.h, plan.bq, plan.nl, plan.span, plan.gk, plan.t
        bh, d = b * h, qp.shape[-1]
        k, v = (x[:, bq:bq + t].view(b, h, t, d) for x in (kp, vp))  # positions 0 .. T−1 of the padded rows
        dtype, dev = qp.dtype, qp.device
        low = dtype in _LOW_PRECISION
        acc_dt = torch.float32 if low else dtype  # the gradient sums of K and V rows
        dout = dout.to(dtype)
        dq_all = qp.new_empty(b, h, gk + nl * bq, d)
        dk_g = dv_g = None
        if gk:
            dk_g, dv_g = k.new_empty(k.shape), v.new_empty(v.shape)
            _global_rows_backward(ctx.global_probs, dout[:, :, :gk], q_glob, k, v, scale, dq_all[:, :, :gk], dk_g,
                                  dv_g)
        dop = _padded(dout[:, :, gk:], 0, nl * bq).view(b, h, nl, bq, d)
        if plan.empty is not None:  # rows that see no key pass no gradient
            dop.masked_fill_(plan.empty[:, None, :, :, None], 0.0)
        dop = dop.view(bh, nl, bq, d)
        group = plan.group
        dq = dq_all[:, :, gk:].view(bh, nl, bq, d)
        dkp = torch.zeros(bh, plan.lk, d, dtype=acc_dt, device=dev)
        dvp = torch.zeros(bh, plan.lk, d, dtype=acc_dt, device=dev)
        dbuf = qp.new_empty(bh * group * bq * span)
        kg_buf, vg_buf = qp.new_empty(bh * group * span * d), qp.new_empty(bh * group * span * d)
        part = qp.new_empty(bh * group * span * d)
        wide = torch.empty(part.shape, dtype=acc_dt, device=dev) if low else None
        for (n0, n1), p in zip(plan.groups(), probs):
            g = n1 - n0
            ds = _lead(dbuf, bh, g, bq, span)
            kg = plan.gather(kp, n0, n1, _lead(kg_buf, bh, g, span, d))
            vg = plan.gather(vp, n0, n1, _lead(vg_buf, bh, g, span, d))
            for j in range(bh):  # dP = dO·Vᵀ
                torch.bmm(dop[j, n0:n1], vg[j].transpose(1, 2), out=ds[j])
            # dS = P ⊙ (dP − rowsum(P ⊙ dP)), in place (16-bit inputs: float32 inside the kernel, rounded once)
            softmax_backward_(ds, p, dtype)
            for j in range(bh):  # dQ = dS·K
                torch.bmm(ds[j], kg[j], out=dq[j, n0:n1])
            for acc, weights, src in ((dkp, ds, qp), (dvp, p, dop)):  # dK = dSᵀ·Q, dV = Pᵀ·dO per block
                pv = _lead(part, bh, g, span, d)
                for j in range(bh):
                    torch.bmm(weights[j].transpose(1, 2), src[j, n0:n1], out=pv[j])
                plan.scatter_add(acc, _lead(wide, bh, g, span, d).copy_(pv) if low else pv, n0, n1)
        dq.mul_(scale)
        dk, dv = (x[:, bq:bq + t].view(b, h, t, d).to(dtype) for x in (dkp, dvp))
        if gk:
            dk.add_(dk_g)
            dv.add_(dv_g)
        return dq_all[:, :, :t], dk, dv, None, None, None


def _mask_(s: Tensor, plan: LocalPlan, n0: int, n1: int) -> None:
    """Scores ``s [B·H, g, Bq, S]`` of local blocks ``[n0, n1)``: add the column bias (``-inf`` = no key), the
    causal own-block triangle, and set rows that see no key to 0 (finite; their output is zeroed)."""
    b, h, bq, span = plan.b, plan.h, plan.bq, plan.span
    s5 = s.view(b, h, n1 - n0, bq, span)
    s5.add_(plan.cols[:, None, n0:n1, None, :])
    if plan.own is not None:
        s[:, :, :, plan.gk + bq:plan.gk + 2 * bq].add_(plan.own)
    if plan.empty is not None:
        s5.masked_fill_(plan.empty[:, None, n0:n1, :, None], 0.0)


def blocks_attention(q: Tensor, k: Tensor, v: Tensor, plan: LocalPlan, scale: float, *,
                     key_padding_mask: Tensor | None) -> Tensor:
    """BigBird-ITC attention with at least one local block (T > G): q, k, v ``[B, H, T, d]`` -> ``[B, H, T, d]`` in
    the dtype of q, differentiable in q, k, v. Rows ``< G`` see every key (``longformer._global_rows_forward``), the
    others their local pattern (see the module docstring)."""
    hide = None if key_padding_mask is None else ~key_padding_mask
    with no_autocast(q.device):
        return _BigBird.apply(q, k, v, plan, scale, hide)
