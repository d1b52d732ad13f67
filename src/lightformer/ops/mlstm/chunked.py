"""The mLSTM in chunkwise-parallel form, O(T·(C·d + d²)) time and O(T·d + d²) memory, forward and backward.

Same semantics as ``naive.mlstm_recurrent`` (conventions and the stabilised recurrence there; Beck et al. 2024,
"xLSTM", arXiv 2405.04517, Sec. 2.3 and App. A), computed chunk by chunk as in the paper's chunkwise form (and
xlstm's ``chunkwise_simple``), never building the T×T matrix of the parallel form. Per head, with a_t = log f_t,
chunks of C tokens and, inside a chunk, b_t = Σ_{s<=t} a_s (inclusive, from the chunk's start):

    log D_tj = Σ_{j<s<=t} a_s + ĩ_j   (j <= t; a masked segment sum: a cumsum under a lower-triangular mask)
    m_t      = max(max_j log D_tj, b_t + m_prev)                  (= the recurrence's m_t exactly)
    h_t      = [Σ_j e^{log D_tj − m_t}(q_t·k_j) v_j + e^{b_t + m_prev − m_t} C'_prevᵀq_t]
               / max(|Σ_j e^{log D_tj − m_t}(q_t·k_j) + e^{b_t + m_prev − m_t} n'_prev·q_t|, e^{−m_t})

where (C'_prev, n'_prev, m_prev) is the state before the chunk. Every exponent is <= 0. The states at chunk ends
are those of the recurrence, m included: with g_c = Σ_{s in c} a_s and u_c = max_j log D_{last,j},
m_c = max(g_c + m_{c−1}, u_c) and

    C'_c = e^{g_c + m_{c−1} − m_c} C'_{c−1} + Σ_j e^{log D_{last,j} − m_c} k_j v_jᵀ

(each weight one exp of a masked segment sum, <= 1; nothing spans more than one chunk).

Groups. Chunks are processed G at a time (``GROUP_ELEMENTS`` bounds the B·H·G·d² floats of a group's states),
chunk-major (``[G, B, H, ...]``) so that the states before and after each chunk are contiguous slices of one
``[G + 1, B, H, d, d]`` buffer: the G chunk contributions are one batched matmul, the G chunk-end states a G-step
fused scan (``addcmul_`` on ``[B, H, d, d]``; a [G, G] × [G, d²] matmul with inner size G ran at a third of the
matmul rate), and every read-out one batched matmul. The stabilisers m_c of the G chunk ends come from one
[G, G] masked segment sum of the g's (as in Mamba-2's SSD, Dao & Gu 2024, Listing 1).

Backward (``_MLSTMChunked``, hand-written; autograd would keep every group's [G, C, C] and [G, d, d] tensors). The
max-stabilisers are constants: the outputs and the unstabilised states do not depend on them, so their argmax
gets no gradient, in exact maths. The state gradients are carried stabilised by the forward's own m: the dual of
C'_c (the gradient with respect to C'_c at fixed m_c) obeys

    δ_{c−1} = e^{g_c + m_{c−1} − m_c} δ_c + Σ_{t in c} e^{b_t + m_{c−1} − m_t} q_t dnum'_tᵀ

(all weights <= 1), evaluated per group by the same kind of G-step scan, backwards, from the dual carried in from
the next group. The final state's m_T (a max over the sequence) sends its gradient to its argmax (recorded in
the forward), the initial state gets δ_0 and dm_0 = <δ_0, C'_0> + <δn_0, n'_0>. The group's chunk-end states are
recomputed from the state saved at each group's start (B·H·d² floats per group).

Dtypes: float64 is computed in float64. Otherwise the gates, the stabilisers and the states (and their
gradients) are float32, the matmuls take operands in the dtype of q (bf16 under autocast) with float32 results;
h is returned in the dtype of v.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..amp import no_autocast
from .naive import MLSTMState

#: floats of one group's [B, H, G, d, d] chunk-state tensor (2^22 float32 = 16 MiB: G = 16 chunks at B = 1,
#: H = 4, d = 256).
GROUP_ELEMENTS = 2 ** 22


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mm(a: Tensor, b: Tensor, mm: torch.dtype, acc: torch.dtype) -> Tensor:
    """a @ b with both operands in ``mm``, result in ``acc``."""
    if a.dtype == b.dtype == mm == acc:
        return a @ b
    return (a.to(mm) @ b.to(mm)).to(acc)


def segsum(x: Tensor) -> Tensor:
    """``x [..., L] -> [..., L, L]`` with out[t, j] = Σ_{j<s<=t} x_s for j <= t and −inf above the diagonal: a cumsum
    under a lower-triangular mask (no difference of two long cumsums, which loses digits)."""
    n = x.shape[-1]
    strict, lower = _masks(n, x.device)
    out = x[..., :, None].expand(*x.shape, n).masked_fill(strict, 0.0).cumsum(dim=-2)  # rows s > j summed
    return out.masked_fill_(lower, float("-inf"))


@functools.lru_cache(maxsize=16)
def _masks(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(s <= j, t < j) as ``[n, n]`` bool: what ``segsum`` zeroes before its cumsum and sets to −inf after."""
    ones = torch.ones(n, n, dtype=torch.bool, device=device)
    return ~ones.tril(-1), ~ones.tril()


def group_chunks(b: int, h: int, d: int, n_chunks: int) -> int:
    """Chunks per group G: B·H·G·d² <= ``GROUP_ELEMENTS`` (at least 1), at most the number of chunks."""
    return max(1, min(n_chunks, GROUP_ELEMENTS // max(1, b * h * d * d)))


class _Group:
    """Everything the forward computes for one group of G chunks from the state carried in; the backward rebuilds
    it from the saved carry. Chunk-major layout, so that the G states before/after each chunk are contiguous
    slices of one buffer and every matmul is one batched call without layout copies: q, k, v ``[G, B, H, C, d]``
    contiguous, per token ``[G, B, H, C]``, per chunk ``[G, B, H]``, states ``[G, B, H, d, d]``."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, a: Tensor, ii: Tensor, c_in: Tensor, n_in: Tensor,
                 m_in: Tensor, mm: torch.dtype) -> None:
        acc = c_in.dtype
        self.q, self.k, self.v = q, k, v
        g, b, h, c, d = q.shape
        self.bcum = a.cumsum(-1)  # b_t, [G, B, H, C]
        self.log_d = segsum(a) + ii[..., None, :]  # log D_tj, [G, B, H, C, C]
        gch = self.bcum[..., -1]  # g_j, [G, B, H]
        last = self.log_d[..., -1, :]  # log D_{last, s} = g_j − b_s + ĩ_s
        # a chunk whose ĩ are all −inf (masked tokens) adds nothing; a finite floor keeps its exps at 0, not NaN
        u = last.amax(-1).clamp_min(-1e30)  # [G, B, H]
        self.seg_g = segsum(gch.movedim(0, -1))  # [B, H, G, G]
        carry = gch.movedim(0, -1).cumsum(-1) + m_in[..., None]  # log weight of the carried-in state, [B, H, G]
        m_end = torch.maximum((self.seg_g + u.movedim(0, -1)[..., None, :]).amax(-1), carry)  # [B, H, G]
        self.m_end = m_end.movedim(-1, 0).contiguous()  # m_j at the end of chunk j, [G, B, H]
        self.m_prev = torch.cat([m_in[None], self.m_end[:-1]], dim=0)  # m before chunk j
        self.gch = gch
        # chunk contributions weighted by e^{log D_{last,s} − m_j} (<= 1), then the chunk-end states by the scan
        # C'_j = e^{g_j + m_{j−1} − m_j} C'_{j−1} + contribution_j: G fused steps on [B, H, d, d]
        self.beta = torch.exp(last - self.m_end[..., None])  # [G, B, H, C]
        self.decay = torch.exp(gch + self.m_prev - self.m_end)  # [G, B, H]
        kb = k.to(acc) * self.beta[..., None]
        states = torch.empty(g + 1, b, h, d, d, dtype=acc, device=q.device)  # [C'_in, C'_0, ..., C'_{G−1}]
        _mm_into(states[1:], kb.transpose(-1, -2), v, mm)
        n_states = torch.empty(g + 1, b, h, d, dtype=acc, device=q.device)
        torch.sum(kb, dim=-2, out=n_states[1:])
        states[0] = c_in
        n_states[0] = n_in
        for j in range(g):
            states[j + 1].addcmul_(states[j], self.decay[j, :, :, None, None])
            n_states[j + 1].addcmul_(n_states[j], self.decay[j, :, :, None])
        self.c_prev, self.c_end = states[:-1], states[1:]  # [G, B, H, d, d], contiguous
        self.n_prev, self.n_end = n_states[:-1], n_states[1:]
        # rows
        prev_log = self.bcum + self.m_prev[..., None]  # [G, B, H, C]
        self.m_row = torch.maximum(self.log_d.amax(-1), prev_log)
        self.dmat = torch.exp(self.log_d - self.m_row[..., None])  # [G, B, H, C, C]
        self.w = torch.exp(prev_log - self.m_row)  # [G, B, H, C]
        self.p = _mm(q, k.transpose(-1, -2), mm, acc).mul_(self.dmat)  # (q_t·k_s) D_ts
        self.qn = (q.to(acc) @ self.n_prev[..., None])[..., 0]  # q_t·n'_prev, [G, B, H, C]
        self.den = self.p.sum(-1) + self.w * self.qn
        self.norm = torch.maximum(self.den.abs(), torch.exp(-self.m_row)).clamp_min(torch.finfo(acc).tiny)
        self.mm, self.acc = mm, acc

    def output(self) -> Tensor:
        """h ``[G, B, H, C, d]`` in float32 (float64)."""
        mm, acc = self.mm, self.acc
        num = _mm(self.q, self.c_prev, mm, acc).mul_(self.w[..., None])
        _mm_add(num, self.p, self.v, mm)
        return num.div_(self.norm[..., None])

    def winner(self, start: int) -> Tensor:
        """Position of the argmax of m at the group's end (the token whose ĩ it is), or −1 if the carried-in m."""
        c = self.log_d.shape[-1]
        last = self.log_d[..., -1, :].movedim(0, -2)  # [B, H, G, C]
        last_chunk = self.seg_g[..., -1, :] + last.amax(-1)  # [B, H, G]
        best_c = last_chunk.argmax(-1)  # [B, H]
        best_j = last.argmax(-1).gather(-1, best_c[..., None])[..., 0]
        pos = start + best_c * c + best_j
        carried = (self.gch.sum(0) + self.m_prev[0]) >= last_chunk.amax(-1)
        return torch.where(carried, torch.full_like(pos, -1), pos)


def _mm_into(out: Tensor, a: Tensor, b: Tensor, mm: torch.dtype) -> Tensor:
    """out = a @ b (operands in ``mm``), written into ``out`` (contiguous, any float dtype)."""
    if out.dtype == mm and a.dtype == b.dtype == mm:
        return torch.matmul(a, b, out=out)
    return out.copy_(a.to(mm) @ b.to(mm))


def _mm_add(out: Tensor, a: Tensor, b: Tensor, mm: torch.dtype) -> Tensor:
    """out += a @ b over the leading dims; one fused ``baddbmm_`` when no cast is needed."""
    if out.dtype == a.dtype == b.dtype == mm and out.is_contiguous():
        out.view(-1, *out.shape[-2:]).baddbmm_(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
        return out
    return out.add_(_mm(a, b, mm, out.dtype))


def _tokens(x: Tensor, lo: int, hi: int, c: int, scale: float = 1.0) -> Tensor:
    """Tokens lo:hi of ``x [B, H, T, d]`` (any strides) as a contiguous chunk-major ``[G, B, H, C, d]`` copy, times
    ``scale``."""
    view = rearrange(x[:, :, lo:hi], "b h (g c) d -> g b h c d", c=c)
    if scale == 1.0:
        return view.contiguous()
    return torch.mul(view, scale, out=torch.empty(view.shape, dtype=x.dtype, device=x.device))


def _gates(x: Tensor, lo: int, hi: int, c: int) -> Tensor:
    """``[B, H, T]`` -> ``[G, B, H, C]`` for tokens lo:hi."""
    return rearrange(x[:, :, lo:hi], "b h (g c) -> g b h c", c=c)


class _MLSTMChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, c0: Tensor, n0: Tensor,
                m0: Tensor, c: int, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, h, t, d = q.shape
        acc, mm = c0.dtype, q.dtype
        pad = -t % c
        tp = t + pad
        g = group_chunks(b, h, d, tp // c)
        with torch.no_grad():
            a = F.pad(F.logsigmoid(f_pre.to(acc)), (0, pad))  # padded steps: f = 1 ...
            ii = F.pad(i_pre.to(acc), (0, pad), value=float("-inf"))  # ... and i = 0: the state passes unchanged
            qp, kp, vp = (F.pad(x, (0, 0, 0, pad)) if pad else x for x in (q, k, v))
            # [B, T, H, d] storage: the caller's layout of heads, so its next reshape is free
            out = torch.empty(b, tp, h, d, dtype=v.dtype, device=v.device)
            c_run, n_run, m_run = c0, n0, m0
            carries, winner = [], torch.full((b, h), -1, dtype=torch.long, device=q.device)
            for lo in range(0, tp, g * c):
                hi = min(tp, lo + g * c)
                carries.append((c_run, n_run, m_run))
                grp = _Group(_tokens(qp, lo, hi, c), _tokens(kp, lo, hi, c, scale), _tokens(vp, lo, hi, c),
                             _gates(a, lo, hi, c), _gates(ii, lo, hi, c), c_run, n_run, m_run, mm)
                out[:, lo:hi] = rearrange(grp.output(), "g b h c d -> b (g c) h d")
                win = grp.winner(lo)
                winner = torch.where(win >= 0, win, winner)
                c_run, n_run, m_run = grp.c_end[-1].clone(), grp.n_end[-1].clone(), grp.m_end[-1]
        ctx.save_for_backward(q, k, v, i_pre, f_pre, out, c_run, n_run, winner,
                              *[x for carry in carries for x in carry])
        ctx.c, ctx.g, ctx.n_groups, ctx.scale = c, g, len(carries), scale
        return out[:, :t].permute(0, 2, 1, 3), c_run, n_run, m_run.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor | None, dc_t: Tensor | None, dn_t: Tensor | None, dm_t: Tensor | None):
        q, k, v, i_pre, f_pre, out, c_t, n_t, winner, *flat = ctx.saved_tensors
        carries = [flat[3 * i:3 * i + 3] for i in range(ctx.n_groups)]
        c, g, scale = ctx.c, ctx.g, ctx.scale
        b, h, t, d = q.shape
        acc, mm = c_t.dtype, q.dtype
        pad = -t % c
        tp = t + pad
        a = F.pad(F.logsigmoid(f_pre.to(acc)), (0, pad))
        ii = F.pad(i_pre.to(acc), (0, pad), value=float("-inf"))
        qp, kp, vp = (F.pad(x, (0, 0, 0, pad)) if pad else x for x in (q, k, v))
        out = out.permute(0, 2, 1, 3)  # [B, H, Tp, d] view
        if dout is None:
            dout = torch.zeros_like(out)
        elif pad:
            dout = F.pad(dout, (0, 0, 0, pad))
        delta = torch.zeros_like(c_t) if dc_t is None else dc_t.to(acc).clone()  # dual of C' at the group's end
        delta_n = torch.zeros_like(n_t) if dn_t is None else dn_t.to(acc).clone()
        # m_T = max over the sequence: its total gradient (holding C_T = C'_T e^{m_T} fixed) goes to the argmax
        dm_total = torch.zeros_like(c_t[..., 0, 0]) if dm_t is None else dm_t.to(acc).clone()
        dm_total -= (delta * c_t).sum((-1, -2)) + (delta_n * n_t).sum(-1)
        grads = [torch.empty(b, tp, h, d, dtype=x.dtype, device=x.device) for x in (q, k, v)]  # [B, T, H, d]
        da = torch.empty(b, h, tp, dtype=acc, device=q.device)
        dii = torch.empty_like(da)
        starts = list(range(0, tp, g * c))
        for gi in reversed(range(len(starts))):
            lo = starts[gi]
            hi = min(tp, lo + g * c)
            grp = _Group(_tokens(qp, lo, hi, c), _tokens(kp, lo, hi, c, scale), _tokens(vp, lo, hi, c),
                         _gates(a, lo, hi, c), _gates(ii, lo, hi, c), *carries[gi], mm)
            qg, kg, vg = grp.q, grp.k, grp.v
            gg = qg.shape[0]  # chunks in this group (the last group may be short)
            dnum = _tokens(dout, lo, hi, c).to(acc).div_(grp.norm[..., None])
            # h = num'/N with N = max(|den'|, e^{−m}); m is a constant (h does not depend on it)
            hg = _tokens(out, lo, hi, c).to(acc)
            active = grp.den.abs() >= torch.exp(-grp.m_row)
            dden = torch.where(active, -(dnum * hg).sum(-1) * torch.sign(grp.den), 0.0)  # [G, B, H, C]
            # intra-chunk: P = (q·k) ⊙ D
            dp = _mm(dnum, vg.transpose(-1, -2), mm, acc).add_(dden[..., None])
            dv_g = _mm(grp.p.transpose(-1, -2), dnum, mm, acc)
            r = dp * grp.p  # d log D
            ds = dp.mul_(grp.dmat)  # d(q·k)
            dq_g = _mm(dnum, grp.c_prev.transpose(-1, -2), mm, acc)
            dq_g.add_(dden[..., None] * grp.n_prev[..., None, :]).mul_(grp.w[..., None])  # the read-out's part
            dlog_w = (dq_g * qg.to(acc)).sum(-1)  # [G, B, H, C]
            _mm_add(dq_g, ds, kg, mm)
            dk_g = _mm(ds.transpose(-1, -2), qg, mm, acc)
            # duals of the states before each chunk (index j) and after the group (index G):
            # δ_j = e^{g_j + m_{j−1} − m_j} δ_{j+1} + Σ_{t in j} w_t q_t dnum_tᵀ
            qw = qg.to(acc) * grp.w[..., None]
            duals = torch.empty(gg + 1, b, h, d, d, dtype=acc, device=q.device)
            _mm_into(duals[:gg], qw.transpose(-1, -2), dnum, mm)
            duals[gg] = delta
            n_duals = torch.empty(gg + 1, b, h, d, dtype=acc, device=q.device)
            torch.sum(qw * dden[..., None], dim=-2, out=n_duals[:gg])
            n_duals[gg] = delta_n
            for j in reversed(range(gg)):
                duals[j].addcmul_(duals[j + 1], grp.decay[j, :, :, None, None])
                n_duals[j].addcmul_(n_duals[j + 1], grp.decay[j, :, :, None])
            d_after, dn_after = duals[1:], n_duals[1:]
            # state contributions of the keys/values of chunk j, weighted by β = exp(log D_{last,·} − m_j)
            dk_state = _mm(vg, d_after.transpose(-1, -2), mm, acc).add_(dn_after[..., None, :])
            dk_state.mul_(grp.beta[..., None])
            dv_state = _mm(kg, d_after, mm, acc).mul_(grp.beta[..., None])
            dlog_beta = (dk_state * kg.to(acc)).sum(-1)
            dk_g.add_(dk_state)
            dv_g.add_(dv_state)
            # chunk decay g_j in C_j = e^{g_j} C_{j−1} + ...
            dg = grp.decay * (torch.linalg.vecdot(d_after.flatten(-2), grp.c_prev.flatten(-2))
                              + torch.linalg.vecdot(dn_after, grp.n_prev))
            # gates: log D_ts = Σ_{s<u<=t} a_u + ĩ_s; log w_t = b_t + ...; log β_s = Σ_{s<u<=last} a_u + ĩ_s
            corner = torch.zeros_like(r)
            corner[..., 1:] = r[..., :-1]
            corner = corner.cumsum(-1).flip(-2).cumsum(-2).flip(-2)  # Σ_{t'>=t} Σ_{s<u} R_{t's} at [t, u]
            da_g = torch.diagonal(corner, dim1=-2, dim2=-1).clone()
            da_g += dlog_w.flip(-1).cumsum(-1).flip(-1)  # Σ_{t>=u} d log w_t
            da_g[..., 1:] += dlog_beta[..., :-1].cumsum(-1)  # Σ_{s<u} d log β_s
            da_g += dg[..., None]
            dii_g = r.sum(-2) + dlog_beta
            if scale != 1.0:
                dk_g.mul_(scale)  # the gradient of the caller's k, not of the scaled one
            for buf, grad in zip(grads, (dq_g, dk_g, dv_g)):
                buf[:, lo:hi] = rearrange(grad, "g b h c d -> b (g c) h d")
            da[:, :, lo:hi] = rearrange(da_g, "g b h c -> b h (g c)")
            dii[:, :, lo:hi] = rearrange(dii_g, "g b h c -> b h (g c)")
            delta, delta_n = duals[0].clone(), n_duals[0].clone()
        c0, n0, m0 = carries[0]
        dm0 = (delta * c0).sum((-1, -2)) + (delta_n * n0).sum(-1)
        # route dm_total: m_T = ĩ_p + Σ_{s>p} a_s (winner p), or m_0 + Σ_s a_s (winner −1)
        pos = torch.arange(tp, device=q.device)
        da += dm_total[..., None] * (pos > winner[..., None])
        dii.scatter_add_(-1, winner.clamp_min(0)[..., None], (dm_total * (winner >= 0))[..., None])
        dm0 += dm_total * (winner < 0)
        df = da[..., :t] * torch.sigmoid(-f_pre.to(acc))  # d logsigmoid(x)/dx = σ(−x)
        dq, dk, dv = (x[:, :t].permute(0, 2, 1, 3) for x in grads)
        return (dq, dk, dv, dii[..., :t].to(i_pre.dtype), df.to(f_pre.dtype), delta.to(c0.dtype),
                delta_n.to(n0.dtype), dm0.to(m0.dtype), None, None)


def mlstm_chunked(q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, *, chunk_size: int = 64,
                  scale: float = 1.0, initial_state: MLSTMState | None = None, output_final_state: bool = False
                  ) -> tuple[Tensor, MLSTMState | None]:
    """The mLSTM of ``naive.mlstm_recurrent``, chunkwise (module docstring).

    Args:
        q, k, v: ``[B, H, T, d]``, one dtype (float64/32, bf16).
        i_pre, f_pre: ``[B, H, T]`` input and forget gate pre-activations ĩ, f̃ (any float dtype).
        chunk_size: tokens per chunk C (>= 1); the intra-chunk part costs O(C²·d) per chunk, the state part O(C·d²).
        scale: keys enter as scale·k (xlstm: d^{-1/2}); applied inside, chunk by chunk, so no scaled copy is kept.
        initial_state: ``(C [B, H, d, d], n [B, H, d], m [B, H])`` (stabilised, C = C' e^m), None = zeros.
        output_final_state: also return the state after the last token.

    Returns:
        ``(h [B, H, T, d] in the dtype of v, final (C, n, m) in float32 — float64 for float64 — or None)``; the
        gradients reach q, k, v, both gates and the initial state, and flow back from the final state.

    Raises:
        ValueError: ``chunk_size < 1``, mismatched shapes, or an initial state of the wrong shape.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must all be [B, H, T, d], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, h, t, d = q.shape
    if i_pre.shape != (b, h, t) or f_pre.shape != (b, h, t):
        raise ValueError(f"i_pre, f_pre must be [B, H, T]={(b, h, t)}, got {tuple(i_pre.shape)}, "
                         f"{tuple(f_pre.shape)}")
    acc = _acc(q.dtype)
    if initial_state is None:
        c0, n0, m0 = (torch.zeros(shape, dtype=acc, device=q.device) for shape in ((b, h, d, d), (b, h, d), (b, h)))
    else:
        c0, n0, m0 = initial_state
        if c0.shape != (b, h, d, d) or n0.shape != (b, h, d) or m0.shape != (b, h):
            raise ValueError(f"initial_state must be (C [B, H, d, d], n [B, H, d], m [B, H]) with B, H, d = "
                             f"{(b, h, d)}, got {tuple(c0.shape)}, {tuple(n0.shape)}, {tuple(m0.shape)}")
        c0, n0, m0 = c0.to(acc), n0.to(acc), m0.to(acc)
    v = v.to(q.dtype)
    k = k.to(q.dtype)
    with no_autocast(q.device):  # dtypes are chosen here (module docstring)
        out, c_t, n_t, m_t = _MLSTMChunked.apply(q, k, v, i_pre, f_pre, c0, n0, m0, min(chunk_size, t), float(scale))
    return out, ((c_t, n_t, m_t) if output_final_state else None)
