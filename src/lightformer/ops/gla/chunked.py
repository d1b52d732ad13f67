"""Gated (vector-decay) linear attention in chunks, O(T·(C + d_v)·d_k) time and O(T·d) memory, forward and backward.

Same semantics and signature as ``ops.gla.naive.recurrent_gla`` (conventions there): S_t = Diag(exp(g_t)) S_{t−1} +
k_t v_tᵀ read by GLA as o_t = S_tᵀq_t (inclusive) or by RWKV-6 as o_t = S_{t−1}ᵀr_t + (r_t·(u ⊙ k_t)) v_t
(exclusive, plus the bonus). With G_t = Σ_{s<=t} g_s (the cumulative log-decay) and Gq_t = G_t (GLA) or G_{t−1}
(RWKV-6), unrolling gives

    o_i = Σ_{j <= i (j < i)} (Σ_c q_ic k_jc exp(Gq_ic − G_jc)) v_j + (q_i ⊙ exp(Gq_i))ᵀ S_0.

Chunks (the chunkwise form of Yang et al. 2024, Sec. 4.2, with log-space gates). T is cut into chunks of C tokens;
b = the cumulative log-decay *inside* a chunk (b_{−1} = 0 at its start), so every exponent below is a difference
of two cumulative sums taken at a later and an earlier point, i.e. <= 0, and every factor lies in (0, 1]:
  * inter-chunk: o_i += (q_i ⊙ exp(bq_i))ᵀ S (S = the state entering the chunk), and the state carried with the
    chunk's total decay: S' = Diag(exp(b_last)) S + Σ_j (k_j ⊙ exp(b_last − b_j)) v_jᵀ  (a sequential scan over
    chunks, one [d_k, d_v] elementwise step per chunk);
  * intra-chunk scores A_ij = Σ_c q_ic k_jc exp(bq_ic − b_jc) by a binary tree of sub-chunks (the secondary
    chunking of the paper, Sec. 4.2, taken down to single tokens): at level s (s = 1, 2, ..., C/2) the chunk splits
    into pairs of adjacent blocks of s tokens; for queries i in the right block and keys j in the left block the
    exponent is split at the boundary p (the left block's last token):
        q_i ⊙ exp(bq_i − b_p)   and   k_j ⊙ exp(b_p − b_j),        both factors <= 1,
    and their product is one [s, s] matmul. Every pair j < i is split at exactly one level, so the levels fill
    the strictly lower triangle of A exactly, with no exp(G)·exp(−G) over an arbitrary span (fla #77, tt-metal
    #56550) and no [C, C, d_k] tensor: each level costs O(d_k) elementwise work per token. The diagonal needs no
    exponential (GLA: A_ii = q_i·k_i; RWKV-6: the diagonal is the bonus, added outside). An exclusive read never
    forms exp(Gq_i − G_i) = exp(−g_i) (which overflows at log-decays near −100), the NaN of fla #77.
Chunks are processed in groups of L tokens (a [B, H, L, max(d, C)] tensor stays below ``GROUP_ELEMENTS``), each
group a handful of batched ops.

Backward (``torch.autograd.Function``; nothing of size [T, d_k, d_v] is kept): the forward saves only the inputs and
the state entering each group; the backward walks the groups in reverse, recomputes the group's chunk states, gets
dS by the reverse scan dS = Diag(exp(b_last)) dS' + Σ_i (q_i ⊙ exp(bq_i)) do_iᵀ, and dq, dk, dv by the transposed
products of the same factors (every factor <= 1 again). The decay gradient needs no extra pass over scores: since
each term depends on q_i, k_j, G only through q_i ⊙ exp(Gq_i) and k_j ⊙ exp(−G_j) (formally),
    ∂L/∂G_t = [q ⊙ ∂L/∂q at the query whose gate is G_t] − k_t ⊙ ∂L/∂k_t + [t = T] Σ_v dS_T ⊙ S_T,
and ∂L/∂g_s = Σ_{t >= s} ∂L/∂G_t (a reverse cumsum) — the identity fla's chunk_gla backward uses.

Dtypes: float64 is computed in float64. Otherwise the gates, their exponentials, the states and their gradients
are float32 (fla PR #37) and the matmuls take operands in the dtype of v (bf16 under autocast: AMX); the output
and the state are float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from ..amp import no_autocast

#: elements of one [B, H, L, max(d_k, d_v, C)] tensor per group (2^21 float32 = 8 MiB)
GROUP_ELEMENTS = 2 ** 21


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(x: Tensor, c: int) -> Tensor:
    return rearrange(x, "b h (n c) d -> b h n c d", c=c)


def _unchunk(x: Tensor) -> Tensor:
    return rearrange(x, "b h n c d -> b h (n c) d")


class _Gates:
    """The log-space gates of one group of chunks ``[B, H, G, C, d_k]`` and the inter-chunk factors."""

    def __init__(self, g: Tensor, c: int, exclusive: bool):
        self.b = _chunks(g, c).cumsum(-2)  # b_i: cumulative log-decay inside each chunk (inclusive)
        if exclusive:  # bq_i = b_{i−1}, exact (a shifted copy, not b_i − g_i), 0 at the chunk start
            self.bq = torch.zeros_like(self.b)
            self.bq[..., 1:, :] = self.b[..., :-1, :]
        else:
            self.bq = self.b
        self.last = self.b[..., -1:, :]  # [B, H, G, 1, d_k], the chunk's total log-decay
        self.eq = self.bq.exp()  # query factor against the chunk-entry state
        self.ek = (self.last - self.b).exp_()  # key factor into the chunk-exit state
        self.decay = self.last[..., 0, :].exp()  # [B, H, G, d_k]


def _levels(c: int):
    s = 1
    while s < c:
        yield s
        s *= 2


def _block_view(a: Tensor, s: int) -> Tensor:
    """The (right block of queries, left block of keys) entries of every pair at level s of ``a [..., C, C]``, as a
    writable view ``[..., s, s, C/(2s)]`` (pair index last)."""
    *lead, c, _ = a.shape
    n = c // (2 * s)
    a6 = a.view(*lead, n, 2, s, n, 2, s)[..., 1, :, :, 0, :]  # [..., n, s, n, s]
    return a6.diagonal(dim1=-4, dim2=-2)


def _level_factors(q: Tensor, k: Tensor, gates: _Gates, s: int, mm: torch.dtype):
    """Level s: (q̃ = q_right ⊙ exp(bq_right − b_p), k̃ = k_left ⊙ exp(b_p − b_left), eq, ek), ``[..., n, s, d_k]``.
    Both exponents are <= 0 (p = the last token of the left block)."""
    c = q.shape[-2]
    n = c // (2 * s)

    def split(x):
        return x.unflatten(-2, (n, 2, s))

    b, bq = split(gates.b), split(gates.bq)
    ref = b[..., 0, s - 1:s, :]  # [..., n, 1, d_k]
    eq = torch.sub(bq[..., 1, :, :], ref).exp_()
    ek = torch.sub(ref, b[..., 0, :, :]).exp_()
    qt = (split(q)[..., 1, :, :] * eq).to(mm)
    kt = (split(k)[..., 0, :, :] * ek).to(mm)
    return qt, kt, eq, ek


def _scores(q: Tensor, k: Tensor, gates: _Gates, exclusive: bool, mm: torch.dtype) -> Tensor:
    """A ``[B, H, G, C, C]`` (dtype mm): A_ij = Σ_c q_ic k_jc exp(bq_ic − b_jc) for j < i (and j = i unless
    exclusive), zero above."""
    *lead, c, _ = q.shape
    a = torch.zeros(*lead, c, c, dtype=mm, device=q.device)
    for s in _levels(c):
        qt, kt, _, _ = _level_factors(q, k, gates, s, mm)
        _block_view(a, s).copy_((qt @ kt.transpose(-1, -2)).movedim(-3, -1))
    if not exclusive:
        a.diagonal(dim1=-2, dim2=-1).copy_(torch.linalg.vecdot(q, k))
    return a


def _scan(decay: Tensor, x: Tensor, s: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Entering states of a linear recurrence over chunks: out[i] = s before chunk i, s <- decay[i] ⊙ s + x[i]
    (``reverse``: the same from the last chunk backwards). decay ``[B, H, G, d_k]``, x ``[B, H, G, d_k, d_v]``."""
    out = torch.empty_like(x)
    order = range(x.shape[2] - 1, -1, -1) if reverse else range(x.shape[2])
    for i in order:
        out[:, :, i] = s
        s = torch.addcmul(x[:, :, i], decay[:, :, i, :, None], s)
    return out, s


class _ChunkGLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor, s0: Tensor | None, exclusive: bool, c: int,
                group: int) -> tuple[Tensor, Tensor]:
        acc, mm = g.dtype, v.dtype
        b, h, t, dk = q.shape
        dv = v.shape[-1]
        s = torch.zeros(b, h, dk, dv, dtype=acc, device=q.device) if s0 is None else s0.to(acc)
        o = torch.empty(b, h, t, dv, dtype=acc, device=q.device)
        entries = []
        for lo in range(0, t, group):
            sl = slice(lo, lo + group)
            entries.append(s)
            qc, kc, vc = _chunks(q[:, :, sl], c), _chunks(k[:, :, sl], c), _chunks(v[:, :, sl], c)
            gates = _Gates(g[:, :, sl], c, exclusive)
            kd = (kc * gates.ek).to(mm)
            states, s = _scan(gates.decay, (kd.transpose(-1, -2) @ vc).to(acc), s)  # [B, H, G, d_k, d_v]
            oc = ((qc * gates.eq).to(mm) @ states.to(mm)).to(acc)
            oc += _scores(qc, kc, gates, exclusive, mm) @ vc
            o[:, :, sl] = _unchunk(oc)
        ctx.save_for_backward(q, k, v, g, s0, torch.stack(entries, 2), s)
        ctx.exclusive, ctx.c, ctx.group = exclusive, c, group
        return o, s

    @staticmethod
    def backward(ctx, do: Tensor, ds_final: Tensor | None):
        q, k, v, g, s0, entries, s_final = ctx.saved_tensors
        exclusive, c, group = ctx.exclusive, ctx.c, ctx.group
        acc, mm = g.dtype, v.dtype
        t = q.shape[2]
        do = do.to(mm)
        dq = torch.empty(q.shape, dtype=acc, device=q.device)
        dk = torch.empty(k.shape, dtype=acc, device=q.device)
        dv = torch.empty_like(v)
        ds = torch.zeros_like(s_final) if ds_final is None else ds_final.to(acc)
        ds_t = ds
        starts = list(range(0, t, group))
        for gi in reversed(range(len(starts))):
            sl = slice(starts[gi], starts[gi] + group)
            qc, kc, vc, doc = (_chunks(x[:, :, sl], c) for x in (q, k, v, do))
            gates = _Gates(g[:, :, sl], c, exclusive)
            qd, kd = (qc * gates.eq).to(mm), (kc * gates.ek).to(mm)
            states, _ = _scan(gates.decay, (kd.transpose(-1, -2) @ vc).to(acc), entries[:, :, gi])
            ds_exit, ds = _scan(gates.decay, (qd.transpose(-1, -2) @ doc).to(acc), ds, reverse=True)
            states, ds_exit = states.to(mm), ds_exit.to(mm)
            a = _scores(qc, kc, gates, exclusive, mm)
            dvc = a.transpose(-1, -2) @ doc
            dvc += kd @ ds_exit
            dv[:, :, sl] = _unchunk(dvc)
            dqc = (doc @ states.transpose(-1, -2)).to(acc).mul_(gates.eq)  # [B, H, G, C, d_k]
            dkc = (vc @ ds_exit.transpose(-1, -2)).to(acc).mul_(gates.ek)
            da = (doc @ vc.transpose(-1, -2))
            da = da.tril_(-1) if exclusive else da.tril_()
            n_c = qc.shape[-2]
            for s in _levels(n_c):
                qt, kt, eq, ek = _level_factors(qc, kc, gates, s, mm)
                dblk = _block_view(da, s).movedim(-1, -3)  # [..., n, s, s]
                dq_r = dqc.unflatten(-2, (n_c // (2 * s), 2, s))[..., 1, :, :]
                dk_l = dkc.unflatten(-2, (n_c // (2 * s), 2, s))[..., 0, :, :]
                dq_r.addcmul_((dblk @ kt).to(acc), eq)
                dk_l.addcmul_((dblk.transpose(-1, -2) @ qt).to(acc), ek)
            if not exclusive:
                dd = da.diagonal(dim1=-2, dim2=-1).to(acc)[..., None]  # [B, H, G, C, 1]
                dqc.addcmul_(dd, kc.to(acc))
                dkc.addcmul_(dd, qc.to(acc))
            dq[:, :, sl] = _unchunk(dqc)
            dk[:, :, sl] = _unchunk(dkc)
        # dL/dG_t, then dL/dg_s = Σ_{t >= s} dL/dG_t (module docstring)
        dgate = k.to(acc) * dk
        dgate.neg_()
        if exclusive:  # query t reads through G_{t−1}
            dgate[:, :, :-1].addcmul_(q[:, :, 1:].to(acc), dq[:, :, 1:])
        else:
            dgate.addcmul_(q.to(acc), dq)
        dgate[:, :, -1] += torch.linalg.vecdot(ds_t, s_final)
        dg = dgate.flip(2).cumsum(2).flip(2)
        ds0 = None if s0 is None else ds.to(s0.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg, ds0, None, None, None


def group_size(b: int, h: int, width: int, c: int, t: int) -> int:
    """Tokens per group L: a multiple of ``c`` with B·H·L·width <= ``GROUP_ELEMENTS`` (at least one chunk), not beyond
    the (chunk-padded) length."""
    chunks = max(1, GROUP_ELEMENTS // (b * h * c * max(width, c)))
    return min(chunks, -(-t // c)) * c


def chunk_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float = 1.0, u: Tensor | None = None,
              chunk_size: int = 64, initial_state: Tensor | None = None, output_final_state: bool = False
              ) -> tuple[Tensor, Tensor | None]:
    """Chunked gated linear attention (GLA when ``u`` is None, RWKV-6's bonus form otherwise); see the module
    docstring and ``ops.gla.naive.recurrent_gla`` (same arguments, plus ``chunk_size``).

    Args:
        q, k: ``[B, H, T, d_k]``; v: ``[B, H, T, d_v]``; g: ``[B, H, T, d_k]`` log-decays (<= 0; made float32).
        scale: multiplies q. u: ``[H, d_k]`` bonus (RWKV-6) or None (GLA).
        chunk_size: tokens per chunk C, a power of two (the intra-chunk tree halves blocks down to one token);
            shorter inputs use the smallest power of two >= T.
        initial_state: S_0 ``[B, H, d_k, d_v]`` or None (zeros). output_final_state: also return S_T.

    Returns:
        ``(o [B, H, T, d_v]`` in the dtype of v, ``S_T [B, H, d_k, d_v]`` float32/64 or None). Gradients flow into
        every input, ``u`` and ``initial_state``, and out of the final state.

    Raises:
        ValueError: a chunk size that is not a positive power of two, or a state of wrong shape.
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size}")
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    acc = _acc(v.dtype)
    if initial_state is not None and initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state must be [B, H, d_k, d_v]={(b, h, dk, dv)}, got {tuple(initial_state.shape)}")
    c = min(chunk_size, 1 << (t - 1).bit_length())
    with no_autocast(q.device):  # dtypes are chosen here (module docstring)
        mm = v.dtype
        qs = q.to(mm) * scale if scale != 1.0 else q.to(mm)
        ks, gs = k.to(mm), g.to(acc)
        pad = -t % c
        # padded tokens: zero keys and values, no decay (the final state is unchanged); their outputs are cut off
        qp, kp, vp, gp = (F.pad(x, (0, 0, 0, pad)) if pad else x for x in (qs, ks, v, gs))
        group = group_size(b, h, max(dk, dv), c, t + pad)
        o, s = _ChunkGLA.apply(qp.contiguous(), kp.contiguous(), vp.contiguous(), gp.contiguous(), initial_state,
                               u is not None, c, group)
        if pad:
            o = o[:, :, :t]
        if u is not None:  # the bonus: (r_t · (u ⊙ k_t)) v_t, token-local, by autograd
            bonus = torch.linalg.vecdot(qs.to(acc) * u.to(acc)[:, None, :], ks.to(acc))
            o = o + bonus[..., None] * v.to(acc)
    return o.to(v.dtype), (s if output_final_state else None)
