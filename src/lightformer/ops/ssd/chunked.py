"""Chunked SSD: linear attention with a per-head scalar decay in O(T·C·(d_k + d_v) + T·d_k·d_v) time and
O(T·(d_k + d_v)) memory, forward and backward (same semantics and conventions as ``ops.ssd.naive``).

The chunked algorithm of Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", Sec. 6 and Listing 1; RetNet's
chunkwise retention, Sun et al. 2023, Eq. 7, is the special case g = log γ). The sequence is cut into chunks of C
tokens; inside chunk c, with b_t = Σ_{r<=t} g_r the *local* inclusive cumulative log-decay and S the state before
the chunk:

    1. intra-chunk (diagonal blocks):   O_c  = (Q_c K_cᵀ ⊙ L_c) V_c,    L_c = exp(segsum(g_c))   (masked cumsum)
    2. chunk state (right factors):     ΔS_c = K_cᵀ diag(w) V_c,        w_s = exp(b_last − b_s) = L_c[last, s]
    3. inter-chunk recurrence:          S ← exp(b_last) · S + ΔS_c                  (one [d_k, d_v] update per chunk)
    4. output correction (left factors): O_c += diag(exp(b_t)) Q_c S

Every exponent is a sum of log-decays over one span (a row of a masked segment sum, or a plain inclusive cumsum
from the chunk's start), never a difference of two cumulative sums, so every factor is <= 1 and nothing overflows
however strong or weak the decay (``ops.ssd.segsum``). Heads share q and k in groups (Mamba-2's ``ngroups``).

Memory. Chunks are processed in groups of L tokens (a multiple of C with B·H·L·max(C, d_k, d_v) <=
``GROUP_ELEMENTS``): within a group the masks, products and chunk states are single batched ops; only the state
at each group's entry is saved for the backward pass, which recomputes a group's masks and states from it
(a ``torch.autograd.Function``). Nothing of size [T, C] or [T/C, d_k, d_v] outlives its group. A decay
given as one value per head (``g`` of shape ``[B, H, 1]`` without gradient, RetNet's log γ) makes every chunk's
masks the same: they are computed once per call, and dg is not computed.

Backward, per group in reverse order, from the gradient dS of the group's exit state:
    dW = dO Vᵀ, dP = dW ⊙ L;    dQ = dP K + diag(exp(b)) dO Sᵀ;   dK = dPᵀ Q + diag(w) V dΔSᵀ;
    dV = Wᵀ dO + diag(w) K dΔS;  dΔS_c = dS after chunk c;  dS before chunk c = exp(b_last) dS + Qᵀ diag(exp(b)) dO
and the log-decays by the identity ∂L/∂G_t = q_t·dq_t − k_t·dk_t (+ ⟨dS_T, S_T⟩ at the last token) for the global
cumulative decay G (the output is bilinear in exp(G_t) q_t and exp(−G_s) k_s), then dg_t = Σ_{u>=t} ∂L/∂G_u.

Precision. Matmul operands are in the dtype of v (bf16 under autocast, so they run on AMX), their results widened
to float32 (float64 for float64 inputs); decays, states, their gradients and dg stay in float32 (fla PR #37: bf16
state gradients were 200-3000x off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..amp import no_autocast
from .naive import expand_groups
from .segsum import segsum

#: upper bound on B·H·L·max(C, d_k, d_v) for a group of L tokens (bounds the working memory of a group)
GROUP_ELEMENTS = 1 << 22


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Decays:
    """The decay factors of a group of chunks from its log-decays ``g [B, H, n·C]`` (or ``[B', H, C]`` for one
    chunk standing for all of them, the constant decay of RetNet): L ``[.., n, C, C]``, w = exp(b_last − b_s),
    exp(b_t) ``[.., n, C]`` and exp(b_last) ``[.., n]`` (module docstring)."""

    def __init__(self, g: Tensor, c: int) -> None:
        gc = g.unflatten(-1, (-1, c))  # [B, H, n, C]
        self.lmask = segsum(gc).exp_()  # L [B, H, n, C, C]
        self.w = self.lmask[..., -1, :]  # exp(b_last − b_s) [B, H, n, C]
        self.eb = gc.cumsum(-1).exp_()  # exp(b_t) [B, H, n, C]
        self.decay = self.eb[..., -1]  # exp(b_last) [B, H, n]


class _Group:
    """The recomputable quantities of one group of chunks (see the module docstring for the names)."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, dec: _Decays, s_entry: Tensor, c: int) -> None:
        h = v.shape[1]
        mm, acc = v.dtype, dec.eb.dtype
        self.dec = dec
        self.q = expand_groups(q, h).unflatten(2, (-1, c))  # [B, H, n, C, d_k]
        self.k = expand_groups(k, h).unflatten(2, (-1, c))
        self.v = v.unflatten(2, (-1, c))  # [B, H, n, C, d_v]
        self.wmat = (torch.matmul(self.q, self.k.mT).to(acc) * dec.lmask).to(mm)  # Q Kᵀ ⊙ L
        self.vw = (self.v.to(acc) * dec.w[..., None]).to(mm)  # diag(w) V
        ds = torch.matmul(self.k.mT, self.vw).to(acc)  # ΔS [B, H, n, d_k, d_v]
        decay = dec.decay.expand(ds.shape[:3])
        states = []  # the state before each chunk
        s = s_entry
        for i in range(ds.shape[2]):
            states.append(s)
            s = torch.addcmul(ds[:, :, i], decay[:, :, i, None, None], s)
        self.s_in = torch.stack(states, dim=2)
        self.s_exit = s


def _decays(g: Tensor, const: _Decays | None, lo: int, hi: int, c: int) -> _Decays:
    """Decays of tokens lo..hi: from the one-chunk constant ``const`` when given, else from ``g``."""
    return const if const is not None else _Decays(g[:, :, lo:hi], c)


class _ChunkedSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor, s0: Tensor | None, c: int, group: int,
                const_upto: int) -> tuple[Tensor, Tensor]:
        b, h, t, dv = v.shape
        acc = g.dtype
        # RetNet: every chunk before ``const_upto`` has the same decays, computed once
        const = _Decays(g[:, :, :c], c) if const_upto else None
        out = torch.empty(b, h, t, dv, dtype=v.dtype, device=v.device)
        s = torch.zeros(b, h, q.shape[-1], dv, dtype=acc, device=v.device) if s0 is None else s0.to(acc)
        entries = []
        with torch.no_grad():
            for lo in range(0, t, group):
                sl = slice(lo, lo + group)
                entries.append(s)
                dec = _decays(g, const if lo + group <= const_upto else None, lo, lo + group, c)
                grp = _Group(q[:, :, sl], k[:, :, sl], v[:, :, sl], dec, s, c)
                o = torch.matmul(grp.q, grp.s_in.to(v.dtype)).to(acc).mul_(dec.eb[..., None])  # inter-chunk
                o += torch.matmul(grp.wmat, grp.v)  # intra-chunk
                out[:, :, sl] = o.flatten(2, 3)
                s = grp.s_exit
        ctx.save_for_backward(q, k, v, g, torch.stack(entries), s)
        ctx.c, ctx.group, ctx.const_upto, ctx.s0_dtype = c, group, const_upto, None if s0 is None else s0.dtype
        return out, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor | None, ds_final: Tensor | None):
        q, k, v, g, entries, s_final = ctx.saved_tensors
        c, group = ctx.c, ctx.group
        b, hk, t, dk = q.shape
        h, mm, acc = v.shape[1], v.dtype, g.dtype
        r = h // hk
        dq, dk_, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dG = torch.empty(b, h, t, dtype=acc, device=g.device)  # ∂L/∂G_t
        d_out = torch.zeros_like(v) if d_out is None else d_out.to(mm)
        ds = torch.zeros_like(s_final) if ds_final is None else ds_final.to(acc)
        const_upto = ctx.const_upto
        const = _Decays(g[:, :, :c], c) if const_upto else None
        need_dg = ctx.needs_input_grad[3]
        starts = list(range(0, t, group))
        for j in reversed(range(len(starts))):
            sl = slice(starts[j], starts[j] + group)
            dec = _decays(g, const if starts[j] + group <= const_upto else None, starts[j], starts[j] + group, c)
            grp = _Group(q[:, :, sl], k[:, :, sl], v[:, :, sl], dec, entries[j], c)
            do = d_out[:, :, sl].unflatten(2, (-1, c))  # [B, H, n, C, d_v]
            do_eb = (do.to(acc) * dec.eb[..., None]).to(mm)  # diag(exp(b)) dO
            ds_in = torch.matmul(grp.q.mT, do_eb).to(acc)  # what chunk c's outputs send to its entry state
            decay = dec.decay.expand(ds_in.shape[:3])
            dds = []  # dΔS_c: the gradient of the state after chunk c
            for i in reversed(range(ds_in.shape[2])):
                dds.append(ds)
                ds = torch.addcmul(ds_in[:, :, i], decay[:, :, i, None, None], ds)
            dds_mm = torch.stack(dds[::-1], dim=2).to(mm)
            dp = (torch.matmul(do, grp.v.mT).to(acc) * dec.lmask).to(mm)  # dW ⊙ L [B, H, n, C, C]
            dq_h = torch.matmul(do_eb, grp.s_in.to(mm).mT).to(acc)
            dq_h += torch.matmul(dp, grp.k)
            dk_h = torch.matmul(grp.vw, dds_mm.mT).to(acc)
            dk_h += torch.matmul(dp.mT, grp.q)
            dv_c = torch.matmul(grp.k, dds_mm).to(acc).mul_(dec.w[..., None])
            dv_c += torch.matmul(grp.wmat.mT, do)
            dv[:, :, sl] = dv_c.flatten(2, 3)
            if need_dg:
                dG[:, :, sl] = (torch.linalg.vecdot(grp.q.to(acc), dq_h)
                                - torch.linalg.vecdot(grp.k.to(acc), dk_h)).flatten(2, 3)
            if r > 1:  # heads of a group share q and k: their gradients add up
                dq_h = dq_h.unflatten(1, (hk, r)).sum(2)
                dk_h = dk_h.unflatten(1, (hk, r)).sum(2)
            dq[:, :, sl] = dq_h.flatten(2, 3)
            dk_[:, :, sl] = dk_h.flatten(2, 3)
        dg = None
        if need_dg:
            if ds_final is not None:  # S_T ∝ exp(G_T)
                dG[:, :, -1] += torch.linalg.vecdot(ds_final.to(acc).flatten(-2), s_final.flatten(-2))
            dg = dG.flip(-1).cumsum(-1).flip(-1)  # dg_t = Σ_{u>=t} ∂L/∂G_u
        ds0 = None if ctx.s0_dtype is None else ds.to(ctx.s0_dtype)
        return dq, dk_, dv, dg, ds0, None, None, None


def group_size(b: int, h: int, chunk_size: int, width: int, t: int) -> int:
    """Tokens per group L: a multiple of ``chunk_size`` with B·H·L·max(C, d_k, d_v) <= ``GROUP_ELEMENTS`` (at least
    one chunk), not beyond the (chunk-padded) length ``t``."""
    chunks = max(1, GROUP_ELEMENTS // (b * h * chunk_size * max(width, chunk_size)))
    return min(chunks, -(-t // chunk_size)) * chunk_size


def chunked_ssd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, chunk_size: int = 64,
                initial_state: Tensor | None = None, output_final_state: bool = False
                ) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) S_{t−1} + k_t v_tᵀ, o_t = S_tᵀ q_t, chunked (module docstring).

    Args:
        q, k: ``[B, Hk, T, d_k]``; v: ``[B, H, T, d_v]`` (H a multiple of Hk); q, k are cast to the dtype of v
            (float64, float32 or bf16).
        g: log-decays ``[B, H, T]`` (anything that broadcasts to it, e.g. ``[1, H, 1]`` for RetNet's constant
            log γ), real, <= 0 for a decay; computed in float32 (float64 for float64 v).
        chunk_size: C >= 1 tokens per chunk (the intra-chunk part is quadratic in C); T need not be a multiple.
        initial_state: ``[B, H, d_k, d_v]`` state before the first token (None = zeros).
        output_final_state: also return the state after the last token.

    Returns:
        ``(o, S_T)``: o ``[B, H, T, d_v]`` in the dtype of v, equal to ``naive.recurrent_ssd``; S_T in float32
        (float64 for float64) when ``output_final_state``, else None. Differentiable in q, k, v, g and
        ``initial_state`` (through the hand-written backward of the module docstring).

    Raises:
        ValueError: ``chunk_size < 1`` or inconsistent shapes.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, h, t, dv = v.shape
    if q.dim() != 4 or q.shape != k.shape or q.shape[0] != b or q.shape[2] != t or h % q.shape[1]:
        raise ValueError(f"q, k must be [B, Hk, T, d_k] with Hk dividing H={h}, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} for v {tuple(v.shape)}")
    dk = q.shape[-1]
    if initial_state is not None and initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state must be [B, H, d_k, d_v]={(b, h, dk, dv)}, "
                         f"got {tuple(initial_state.shape)}")
    acc, mm = _acc(v.dtype), v.dtype
    with no_autocast(v.device):  # dtypes are chosen here (module docstring)
        q, k, v = q.to(mm).contiguous(), k.to(mm).contiguous(), v.contiguous()
        c = min(chunk_size, t)
        pad = -t % c
        # one log-decay per head for every token (RetNet): the decays of a chunk are computed once, for every chunk
        # but a padded last one; no gradient for g is needed then
        const_upto = t - t % c if g.dim() == 3 and g.shape[-1] == 1 and not g.requires_grad else 0
        g = g.to(acc).expand(b, h, t).contiguous()
        if pad:  # padded tokens: g = 0 (no decay) and k = v = 0 (no input), so the state passes through them
            q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
            g = F.pad(g, (0, pad))
        group = group_size(b, h, c, max(dk, dv), t + pad)
        o, s = _ChunkedSSD.apply(q, k, v, g, initial_state, c, group, const_upto)
    return (o[:, :, :t] if pad else o), (s if output_final_state else None)
