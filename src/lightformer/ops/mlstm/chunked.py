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

    C'_c = e^{g_c + m_{c−1} − m_c} C'_{c−1} + e^{u_c − m_c} U'_c,      U'_c = Σ_j e^{log D_{last,j} − u_c} k_j v_jᵀ

(a product of two exps, each <= 1, split at the chunk's end between the keys and any later query).

Groups. Chunks are processed G at a time (``GROUP_ELEMENTS`` bounds the B·H·G·d² floats of a group's states):
the G chunk contributions U'_c are one batched matmul, and the G chunk-end states one [G, G] × [G, d²] matmul
with weights exp(segsum(g)_{c,c'} + u_{c'} − m_c) (lower triangle) plus the state carried in from the previous
group (the same segment-sum construction one level up, as in Mamba-2's SSD, Dao & Gu 2024, Listing 1).

Backward (``_MLSTMChunked``, hand-written; autograd would keep every group's [G, C, C] and [G, d, d] tensors). The
max-stabilisers are constants: the outputs and the unstabilised states do not depend on them, so their argmax
gets no gradient, in exact maths. The state gradients are carried stabilised by the forward's own m: the dual of
C'_c (the gradient with respect to C'_c at fixed m_c) obeys

    δ_{c−1} = e^{g_c + m_{c−1} − m_c} δ_c + Σ_{t in c} e^{b_t + m_{c−1} − m_t} q_t dnum'_tᵀ

(all weights <= 1), evaluated per group by one upper-triangular [G, G] × [G, d²] matmul from the dual carried in
from the next group. The final state's m_T (a max over the sequence) sends its gradient to its argmax (recorded in
the forward), the initial state gets δ_0 and dm_0 = <δ_0, C'_0> + <δn_0, n'_0>. The group's chunk-end states are
recomputed from the state saved at each group's start (B·H·d² floats per group).

Dtypes: float64 is computed in float64. Otherwise the gates, the stabilisers and the states (and their
gradients) are float32, the matmuls take operands in the dtype of q (bf16 under autocast) with float32 results;
h is returned in the dtype of v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

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
    rep = x[..., :, None].expand(*x.shape, n)  # rep[s, j] = x_s
    keep = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)  # s > j
    out = rep.masked_fill(~keep, 0.0).cumsum(dim=-2)
    return out.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), float("-inf"))


def group_chunks(b: int, h: int, d: int, n_chunks: int) -> int:
    """Chunks per group G: B·H·G·d² <= ``GROUP_ELEMENTS`` (at least 1), at most the number of chunks."""
    return max(1, min(n_chunks, GROUP_ELEMENTS // max(1, b * h * d * d)))


class _Group:
    """Everything the forward computes for one group of G chunks from the state carried in; the backward rebuilds
    it from the saved carry. Shapes: per token ``[B, H, G, C]``, per chunk ``[B, H, G]``."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, a: Tensor, ii: Tensor, c_in: Tensor, n_in: Tensor,
                 m_in: Tensor, mm: torch.dtype) -> None:
        acc = c_in.dtype
        self.q, self.k, self.v = q, k, v  # [B, H, G, C, d] in the input dtype
        b, h, g, c, d = q.shape
        self.bcum = a.cumsum(-1)  # b_t, [B, H, G, C]
        self.log_d = segsum(a) + ii[..., None, :]  # log D_tj, [B, H, G, C, C]
        gch = self.bcum[..., -1]  # g_c, [B, H, G]
        last = self.log_d[..., -1, :]  # log D_{last, j} = g_c − b_j + ĩ_j
        # a chunk whose ĩ are all −inf (masked tokens) adds nothing; a finite floor keeps its exps at 0, not NaN
        u = last.amax(-1).clamp_min(-1e30)  # [B, H, G]
        self.seg_g = segsum(gch)  # [B, H, G, G]
        weights = self.seg_g + u[..., None, :]  # log weight of U'_{c'} in the state at the end of chunk c
        carry = gch.cumsum(-1) + m_in[..., None]  # log weight of the carried-in state there
        self.m_end = torch.maximum(weights.amax(-1), carry)  # m_c, [B, H, G]
        self.m_prev = torch.cat([m_in[..., None], self.m_end[..., :-1]], dim=-1)  # m before chunk c
        self.gch = gch
        # chunk contributions, stabilised by u_c
        beta_u = torch.exp(last - u[..., None])  # [B, H, G, C]
        kb = k.to(acc) * beta_u[..., None]
        u_c = _mm(kb.transpose(-1, -2), v, mm, acc)  # U'_c, [B, H, G, d, d]
        u_n = kb.sum(-2)  # [B, H, G, d]
        w_st = torch.exp(weights - self.m_end[..., None])  # [B, H, G, G]; 0 above the diagonal
        w_in = torch.exp(carry - self.m_end)  # [B, H, G]
        c_end = (w_st @ u_c.reshape(b, h, g, d * d)).view(b, h, g, d, d)
        c_end.add_(w_in[..., None, None] * c_in[:, :, None])
        n_end = w_st @ u_n + w_in[..., None] * n_in[:, :, None]
        self.c_end, self.n_end = c_end, n_end
        self.c_prev = torch.cat([c_in[:, :, None], c_end[:, :, :-1]], dim=2)  # [B, H, G, d, d]
        self.n_prev = torch.cat([n_in[:, :, None], n_end[:, :, :-1]], dim=2)  # [B, H, G, d]
        # rows
        prev_log = self.bcum + self.m_prev[..., None]  # [B, H, G, C]
        self.m_row = torch.maximum(self.log_d.amax(-1), prev_log)
        self.dmat = torch.exp(self.log_d - self.m_row[..., None])  # [B, H, G, C, C]
        self.w = torch.exp(prev_log - self.m_row)  # [B, H, G, C]
        self.s = _mm(q, k.transpose(-1, -2), mm, acc)  # q_t·k_j, [B, H, G, C, C]
        self.p = self.s * self.dmat
        self.qn = (q.to(acc) @ self.n_prev[..., None])[..., 0]  # q_t·n'_prev, [B, H, G, C]
        self.den = self.p.sum(-1) + self.w * self.qn
        self.norm = torch.maximum(self.den.abs(), torch.exp(-self.m_row)).clamp_min(torch.finfo(acc).tiny)
        self.mm, self.acc = mm, acc

    def output(self) -> Tensor:
        """h ``[B, H, G, C, d]`` in float32 (float64)."""
        mm, acc = self.mm, self.acc
        num = _mm(self.p, self.v, mm, acc)
        num.add_(self.w[..., None] * _mm(self.q, self.c_prev, mm, acc))
        return num.div_(self.norm[..., None])

    def winner(self, start: int) -> Tensor:
        """Position of the argmax of m at the group's end (the token whose ĩ it is), or −1 if the carried-in m."""
        c = self.log_d.shape[-1]
        last_chunk = self.seg_g[..., -1, :] + self.log_d[..., -1, :].amax(-1)  # [B, H, G]
        best_c = last_chunk.argmax(-1)  # [B, H]
        best_j = self.log_d[..., -1, :].argmax(-1).gather(-1, best_c[..., None])[..., 0]
        pos = start + best_c * c + best_j
        carried = (self.gch.sum(-1) + self.m_prev[..., 0]) >= last_chunk.amax(-1)
        return torch.where(carried, torch.full_like(pos, -1), pos)


class _MLSTMChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, c0: Tensor, n0: Tensor,
                m0: Tensor, c: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, h, t, d = q.shape
        acc, mm = c0.dtype, q.dtype
        pad = -t % c
        tp = t + pad
        n_chunks = tp // c
        g = group_chunks(b, h, d, n_chunks)
        with torch.no_grad():
            a = F.pad(F.logsigmoid(f_pre.to(acc)), (0, pad))  # padded steps: f = 1 ...
            ii = F.pad(i_pre.to(acc), (0, pad), value=float("-inf"))  # ... and i = 0: the state passes unchanged
            qp, kp, vp = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
            out = torch.empty(b, h, tp, d, dtype=v.dtype, device=v.device)
            c_run, n_run, m_run = c0, n0, m0
            carries, winner = [], torch.full((b, h), -1, dtype=torch.long, device=q.device)
            for lo in range(0, tp, g * c):
                hi = min(tp, lo + g * c)
                carries.append((c_run, n_run, m_run))
                grp = _Group(*(rearrange(x[:, :, lo:hi], "b h (g c) d -> b h g c d", c=c) for x in (qp, kp, vp)),
                             *(rearrange(x[:, :, lo:hi], "b h (g c) -> b h g c", c=c) for x in (a, ii)),
                             c_run, n_run, m_run, mm)
                out[:, :, lo:hi] = rearrange(grp.output(), "b h g c d -> b h (g c) d")
                win = grp.winner(lo)
                winner = torch.where(win >= 0, win, winner)
                c_run, n_run, m_run = grp.c_end[:, :, -1].clone(), grp.n_end[:, :, -1].clone(), grp.m_end[..., -1]
        ctx.save_for_backward(q, k, v, i_pre, f_pre, out, c_run, n_run, winner,
                              *[x for carry in carries for x in carry])
        ctx.c, ctx.g, ctx.n_groups = c, g, len(carries)
        return out[:, :, :t], c_run, n_run, m_run.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor | None, dc_t: Tensor | None, dn_t: Tensor | None, dm_t: Tensor | None):
        q, k, v, i_pre, f_pre, out, c_t, n_t, winner, *flat = ctx.saved_tensors
        carries = [flat[3 * i:3 * i + 3] for i in range(ctx.n_groups)]
        c, g = ctx.c, ctx.g
        b, h, t, d = q.shape
        acc, mm = c_t.dtype, q.dtype
        pad = -t % c
        tp = t + pad
        a = F.pad(F.logsigmoid(f_pre.to(acc)), (0, pad))
        ii = F.pad(i_pre.to(acc), (0, pad), value=float("-inf"))
        qp, kp, vp = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        dout = torch.zeros_like(out) if dout is None else F.pad(dout, (0, 0, 0, pad))
        delta = torch.zeros_like(c_t) if dc_t is None else dc_t.to(acc).clone()  # dual of C' at the group's end
        delta_n = torch.zeros_like(n_t) if dn_t is None else dn_t.to(acc).clone()
        # m_T = max over the sequence: its total gradient (holding C_T = C'_T e^{m_T} fixed) goes to the argmax
        dm_total = torch.zeros_like(c_t[..., 0, 0]) if dm_t is None else dm_t.to(acc).clone()
        dm_total -= (delta * c_t).sum((-1, -2)) + (delta_n * n_t).sum(-1)
        dq = torch.empty(b, h, tp, d, dtype=acc, device=q.device)
        dk, dv = torch.empty_like(dq), torch.empty_like(dq)
        da = torch.empty(b, h, tp, dtype=acc, device=q.device)
        dii = torch.empty_like(da)
        chunk = lambda x: rearrange(x, "b h (g c) d -> b h g c d", c=c)  # noqa: E731
        unchunk = lambda x: rearrange(x, "b h g c d -> b h (g c) d")  # noqa: E731
        starts = list(range(0, tp, g * c))
        for gi in reversed(range(len(starts))):
            lo = starts[gi]
            hi = min(tp, lo + g * c)
            grp = _Group(*(chunk(x[:, :, lo:hi]) for x in (qp, kp, vp)),
                         *(rearrange(x[:, :, lo:hi], "b h (g c) -> b h g c", c=c) for x in (a, ii)),
                         *carries[gi], mm)
            qg, kg, vg = grp.q, grp.k, grp.v
            dh = chunk(dout[:, :, lo:hi]).to(acc)
            hg = chunk(out[:, :, lo:hi]).to(acc)
            # h = num'/N with N = max(|den'|, e^{−m}); m is a constant (h does not depend on it)
            dnum = dh / grp.norm[..., None]
            active = grp.den.abs() >= torch.exp(-grp.m_row)
            dden = torch.where(active, -(dh * hg).sum(-1) / grp.norm * torch.sign(grp.den), 0.0)  # [B, H, G, C]
            # intra-chunk: P = (q·k) ⊙ D
            dp = _mm(dnum, vg.transpose(-1, -2), mm, acc).add_(dden[..., None])
            dv_g = _mm(grp.p.transpose(-1, -2), dnum, mm, acc)
            ds = dp * grp.dmat  # d(q·k)
            r = dp.mul_(grp.p)  # d log D
            x_inter = _mm(dnum, grp.c_prev.transpose(-1, -2), mm, acc).add_(dden[..., None] * grp.n_prev[:, :, :, None])
            dq_inter = x_inter.mul_(grp.w[..., None])
            dlog_w = (dq_inter * qg.to(acc)).sum(-1)  # [B, H, G, C]
            dq_g = _mm(ds, kg, mm, acc).add_(dq_inter)
            dk_g = _mm(ds.transpose(-1, -2), qg, mm, acc)
            # the read-outs' contribution to the duals of the states before each chunk
            qw = qg.to(acc) * grp.w[..., None]
            e_c = _mm(qw.transpose(-1, -2), dnum, mm, acc)  # [B, H, G, d, d]
            e_n = (qw * dden[..., None]).sum(-2)  # [B, H, G, d]
            # duals after each chunk: δA_c = Σ_{r>=c} exp(segsum(g)_{r,c} + m_c − m_r) [E_{c+1..}, δ_out]_r
            w_b = torch.exp(grp.seg_g.transpose(-1, -2) + grp.m_end[..., :, None] - grp.m_end[..., None, :])
            e_shift = torch.cat([e_c[:, :, 1:], delta[:, :, None]], dim=2)
            en_shift = torch.cat([e_n[:, :, 1:], delta_n[:, :, None]], dim=2)
            gg = e_c.shape[2]
            d_after = (w_b @ e_shift.reshape(b, h, gg, d * d)).view(b, h, gg, d, d)
            dn_after = w_b @ en_shift
            # state contributions of the keys/values of chunk c, weighted by β_j = exp(log D_{last,j} − m_c)
            beta = torch.exp(grp.log_d[..., -1, :] - grp.m_end[..., None])  # [B, H, G, C]
            dk_state = _mm(vg, d_after.transpose(-1, -2), mm, acc).add_(dn_after[:, :, :, None])
            dk_state.mul_(beta[..., None])
            dv_state = _mm(kg, d_after, mm, acc).mul_(beta[..., None])
            dlog_beta = (dk_state * kg.to(acc)).sum(-1)
            dk_g.add_(dk_state)
            dv_g.add_(dv_state)
            # chunk decay g_c in C_c = e^{g_c} C_{c−1} + ...
            decay = torch.exp(grp.gch + grp.m_prev - grp.m_end)  # [B, H, G]
            dg = decay * ((d_after * grp.c_prev).sum((-1, -2)) + (dn_after * grp.n_prev).sum(-1))
            # gates: log D_tj = Σ_{j<s<=t} a_s + ĩ_j; log w_t = b_t + ...; log β_j = Σ_{j<s<=last} a_s + ĩ_j
            corner = torch.zeros_like(r)
            corner[..., 1:] = r[..., :-1]
            corner = corner.cumsum(-1).flip(-2).cumsum(-2).flip(-2)  # Σ_{t'>=t} Σ_{j<s} R_{t'j} at [t, s]
            da_g = torch.diagonal(corner, dim1=-2, dim2=-1).clone()
            da_g += dlog_w.flip(-1).cumsum(-1).flip(-1)  # Σ_{t>=s} d log w_t
            da_g[..., 1:] += dlog_beta[..., :-1].cumsum(-1)  # Σ_{j<s} d log β_j
            da_g += dg[..., None]
            dii_g = r.sum(-2) + dlog_beta
            dq[:, :, lo:hi], dk[:, :, lo:hi], dv[:, :, lo:hi] = unchunk(dq_g), unchunk(dk_g), unchunk(dv_g)
            da[:, :, lo:hi] = rearrange(da_g, "b h g c -> b h (g c)")
            dii[:, :, lo:hi] = rearrange(dii_g, "b h g c -> b h (g c)")
            # dual before the group: δ before chunk 0 = e^{g_0 + m_in − m_0} δA_0 + E_0
            delta = decay[:, :, 0, None, None] * d_after[:, :, 0] + e_c[:, :, 0]
            delta_n = decay[:, :, 0, None] * dn_after[:, :, 0] + e_n[:, :, 0]
        c0, n0, m0 = carries[0]
        dm0 = (delta * c0).sum((-1, -2)) + (delta_n * n0).sum(-1)
        # route dm_total: m_T = ĩ_p + Σ_{s>p} a_s (winner p), or m_0 + Σ_s a_s (winner −1)
        pos = torch.arange(tp, device=q.device)
        da += dm_total[..., None] * (pos > winner[..., None])
        dii.scatter_add_(-1, winner.clamp_min(0)[..., None], (dm_total * (winner >= 0))[..., None])
        dm0 += dm_total * (winner < 0)
        df = da[..., :t] * torch.sigmoid(-f_pre.to(acc))  # d logsigmoid(x)/dx = σ(−x)
        return (dq[:, :, :t].to(q.dtype), dk[:, :, :t].to(k.dtype), dv[:, :, :t].to(v.dtype),
                dii[..., :t].to(i_pre.dtype), df.to(f_pre.dtype), delta.to(c0.dtype), delta_n.to(n0.dtype),
                dm0.to(m0.dtype), None)


def mlstm_chunked(q: Tensor, k: Tensor, v: Tensor, i_pre: Tensor, f_pre: Tensor, *, chunk_size: int = 64,
                  initial_state: MLSTMState | None = None, output_final_state: bool = False
                  ) -> tuple[Tensor, MLSTMState | None]:
    """The mLSTM of ``naive.mlstm_recurrent``, chunkwise (module docstring).

    Args:
        q, k, v: ``[B, H, T, d]``, one dtype (float64/32, bf16).
        i_pre, f_pre: ``[B, H, T]`` input and forget gate pre-activations ĩ, f̃ (any float dtype).
        chunk_size: tokens per chunk C (>= 1); the intra-chunk part costs O(C²·d) per chunk, the state part O(C·d²).
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
    with torch.autocast(device_type=q.device.type, enabled=False):  # dtypes are chosen here (module docstring)
        out, c_t, n_t, m_t = _MLSTMChunked.apply(q, k, v, i_pre, f_pre, c0, n0, m0, min(chunk_size, t))
    return out, ((c_t, n_t, m_t) if output_final_state else None)
