"""The (gated) delta rule in chunks: the WY/UT representation inside a chunk, a state recurrence across chunks.

Same semantics and conventions as ``naive.delta_rule_recurrence`` (recurrence, shapes, dtypes). DeltaNet's chunkwise
form (Yang, Wang, Zhang, Shen, Kim 2024, arXiv 2406.06484, Sec. 3.2-3.3, Eq. 6-9) with Gated DeltaNet's decays
(Yang, Kautz, Hatamizadeh 2025, arXiv 2412.06464, Sec. 3.3). For one chunk of C tokens i = 1..C, starting from
the state S (``[d_k, d_v]``) left by the earlier chunks, with in-chunk cumulative log-decays G_i = Σ_{m<=i} g_m and
the segment sums Γ_ij = G_i − G_j = Σ_{j<m<=i} g_m (i >= j):

    unrolled, the new values v'_i = β_i (v_i − e^{G_i} Sᵀk_i − Σ_{j<i} e^{Γ_ij} (k_iᵀk_j) v'_j), i.e.
    (I + A) V' = diag(β)(V − diag(e^G) K S),   A = tril(diag(β) (K Kᵀ ⊙ e^Γ), −1)          (strictly lower)

so with the UT transform T = (I + A)⁻¹ (unit lower triangular: a forward substitution, ``solve_triangular``)

    W = T (β e^G ⊙ K),   U = T (β ⊙ V),   V' = U − W S                                  (WY representation)
    O = (scale·Q ⊙ e^G) S + (scale·Q Kᵀ ⊙ e^Γ ⊙ causal mask) V'
    S ← e^{G_C} S + (K ⊙ e^{G_C − G})ᵀ V'

W, U and the intra-chunk products are single batched ops over all chunks; only V' = U − W S and the state update
run chunk after chunk (a loop of T/C steps of [C, d] x [d, d] matmuls). DeltaNet (g = None) drops every decay
factor. Every decay factor is an exponential of a non-positive segment sum: Γ is a cumsum of g under a strictly
lower-triangular mask (never exp(G_i)·exp(−G_j), which overflows for long chunks of strong decay: fla #77,
tt-metal #56550), e^{G_i} runs from the chunk start to i and e^{G_C − G_j} is Γ's last row, so every factor is in
[0, 1]. A is bounded the same way (|k_iᵀk_j| <= 1 for unit keys, β <= 1), which keeps the unit-triangular solve
finite when β → 1 with near-parallel keys (fla #99/#111 reported NaN in its WY preparation there).

T need not be a multiple of C: the tail is padded with β = 0 and g = 0 tokens, which leave the state unchanged,
and their outputs are cut off.

Dtypes and gradients: every input is widened to float32 (float64 stays float64) and the op runs with autocast off,
so states, the solve and their gradients are float32 under bf16 autocast; o is returned in the dtype of v, the
final state in float32. Every matmul of the op is float32 too, also under bf16 autocast: the solve needs it, and on
CPUs without AMX/AVX512-BF16 a bf16 GEMM is ~10x slower than float32 (bf16 intra-chunk products are the next
speed-up where AMX exists). The batched intra-chunk part is differentiated by autograd; the sequential part
(``_InterChunk``) has a hand-written backward. Memory: chunks run in groups of L tokens (B·H·L·max(d, C) <=
``GROUP_ELEMENTS``), each under ``torch.utils.checkpoint`` when gradients are needed, so the backward keeps only
the inputs and the state between groups and recomputes one group's W, U, V', chunk states and [C, C] blocks at a
time (one extra forward of the mixing, not of the projections): O(T·(d_k + d_v)) saved, not O(T·(C + d)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..amp import no_autocast
from .naive import state_dtype

#: elements of one [B, H, L, max(d_k, d_v, C)] tensor per checkpointed group of L tokens (2^22 float32 = 16 MiB)
GROUP_ELEMENTS = 2 ** 22


def segment_sums(g: Tensor) -> Tensor:
    """g ``[..., C]`` -> Γ ``[..., C, C]`` with Γ_ij = Σ_{j<m<=i} g_m for j <= i (0 on the diagonal) and −inf above
    it: a cumsum down the columns of a strictly lower-triangular copy of g, so no difference of two cumulative sums
    (whose cancellation loses the small segments of a long run of strong decay) is ever formed."""
    c = g.shape[-1]
    lower = torch.ones(c, c, dtype=torch.bool, device=g.device).tril()
    x = g[..., :, None].expand(*g.shape, c).masked_fill(~lower.tril(-1), 0.0)  # x_ij = g_i for i > j, else 0
    return x.cumsum(-2).masked_fill(~lower, float("-inf"))


class _InterChunk(torch.autograd.Function):
    """The sequential part: V'_n = U_n − W_n S_n, S_{n+1} = d_n S_n + K̃_nᵀ V'_n over the N chunks, with a
    hand-written backward (autograd through a Python loop of T/C steps would add its bookkeeping and copies to
    every step). Inputs flattened over (B, H): w ``[N, BH, C, d_k]``, u ``[N, BH, C, d_v]``, kt = K̃ᵀ
    ``[N, BH, d_k, C]``, decay d_n ``[N, BH, 1, 1]`` or None (1), s0 ``[BH, d_k, d_v]``. Returns (the states
    S_0..S_N ``[N + 1, BH, d_k, d_v]``, V' ``[N, BH, C, d_v]``). Each step is one ``baddbmm`` per product, into
    preallocated outputs.

    Backward, from dS_N and the cotangents of every S_n and V'_n, in reverse chunk order (dS = the running
    gradient of S_{n+1}):  dV'_n += K̃_n dS,  dS ← d_n dS + dS_n − W_nᵀ dV'_n;  then, batched over all chunks,
    dW_n = −dV'_n S_nᵀ, dU_n = dV'_n, dK̃_nᵀ = dS_{n+1} V'_nᵀ, dd_n = Σ dS_{n+1} ⊙ S_n."""

    @staticmethod
    def forward(ctx, w: Tensor, u: Tensor, kt: Tensor, decay: Tensor | None, s0: Tensor):
        n = w.shape[0]
        states = s0.new_empty(n + 1, *s0.shape)
        vn = torch.empty_like(u)
        states[0] = s0
        for i in range(n):
            torch.baddbmm(u[i], w[i], states[i], alpha=-1.0, out=vn[i])
            prev = states[i] if decay is None else states[i] * decay[i]
            torch.baddbmm(prev, kt[i], vn[i], out=states[i + 1])
        ctx.save_for_backward(w, kt, decay, states, vn)
        return states, vn

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states: Tensor | None, d_vn: Tensor | None):
        w, kt, decay, states, vn = ctx.saved_tensors
        n = w.shape[0]
        d_states = torch.zeros_like(states) if d_states is None else d_states
        dvn = torch.zeros_like(vn) if d_vn is None else d_vn.clone()
        ds_next = torch.empty_like(states[1:])  # dS_{n+1} for every chunk n
        ds = d_states[n].clone()
        for i in reversed(range(n)):
            ds_next[i] = ds
            dvn[i].baddbmm_(kt[i].transpose(-1, -2), ds)
            if decay is not None:
                ds = ds * decay[i]
            ds = torch.baddbmm(ds.add_(d_states[i]), w[i].transpose(-1, -2), dvn[i], alpha=-1.0)
        s_prev = states[:-1]
        dw = -(dvn @ s_prev.transpose(-1, -2))
        dkt = ds_next @ vn.transpose(-1, -2)
        dd = None if decay is None else (ds_next * s_prev).sum((-1, -2), keepdim=True)
        return dw, dvn, dkt, dd, ds


def ut_transform(a: Tensor) -> Tensor:
    """The UT transform of each chunk: a ``[..., C, C]`` (only its strictly lower part is read) -> (I + tril(a, −1))⁻¹
    ``[..., C, C]``, unit lower triangular, by one unit-triangular solve against the identity (a batched forward
    substitution); differentiable in a."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve_triangular(a, eye, upper=False, unitriangular=True)


def chunk_delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, *,
                     scale: float | None = None, initial_state: Tensor | None = None,
                     output_final_state: bool = False, chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """The (gated) delta rule in chunks (module docstring).

    Args:
        q, k: ``[B, H, T, d_k]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]``; g: ``[B, H, T]`` log-decays <= 0, or
            None (DeltaNet). Any floating dtype; computed in float32 (float64 for float64).
        scale: multiplies q (default d_k^−1/2).
        initial_state: S_0 ``[B, H, d_k, d_v]`` (None = zeros); gradients flow into it.
        output_final_state: also return S_T (float32, float64 for float64), differentiable.
        chunk_size: tokens per chunk C (a chunk shorter than T is used when T < C).

    Returns:
        ``(o [B, H, T, d_v] in the dtype of v, S_T or None)``, equal to ``naive.delta_rule_recurrence``.

    Raises:
        ValueError: ``chunk_size < 1`` or an ``initial_state`` of the wrong shape.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    if initial_state is not None and initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state must be [B, H, d_k, d_v]={(b, h, dk, dv)}, got "
                         f"{tuple(initial_state.shape)}")
    acc, out_dtype = state_dtype(q.dtype), v.dtype
    scale = dk ** -0.5 if scale is None else scale
    c = min(chunk_size, t)
    pad = -t % c
    with no_autocast(q.device):
        if pad:  # β = 0, g = 0 tokens: no write, no decay (module docstring)
            q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
            beta = F.pad(beta, (0, pad))
            g = None if g is None else F.pad(g, (0, pad))
        s = q.new_zeros(b, h, dk, dv, dtype=acc) if initial_state is None else initial_state.to(acc)
        length = group_tokens(b, h, max(dk, dv, c), c, t + pad)
        grads = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, beta, g, initial_state))
        outs = []
        for lo in range(0, t + pad, length):
            part = [None if x is None else x[:, :, lo:lo + length] for x in (q, k, v, beta, g)]
            if grads:  # keep only this group's inputs and its incoming state; recompute the rest backward
                o, s = checkpoint(_chunk_group, *part, s, c, scale, out_dtype, use_reentrant=False)
            else:
                o, s = _chunk_group(*part, s, c, scale, out_dtype)
            outs.append(o)
        o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if pad:
            o = o[:, :, :t]
    return o, (s if output_final_state else None)


def group_tokens(b: int, h: int, width: int, c: int, t: int) -> int:
    """Tokens per checkpointed group: a multiple of C with B·H·L·width <= ``GROUP_ELEMENTS`` (at least one chunk),
    not beyond T."""
    chunks = max(1, GROUP_ELEMENTS // (b * h * c * width))
    return min(chunks * c, t)


def _chunk_group(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, s0: Tensor, c: int, scale: float,
                 out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One group of whole chunks (length a multiple of C) from the state s0: (o in ``out_dtype``, the state after
    it). Inputs are widened to the state's dtype here, so the checkpoint keeps them in their own dtype."""
    acc = s0.dtype
    b, h, _, dk = q.shape
    dv = v.shape[-1]
    q, k, v, beta = q.to(acc), k.to(acc), v.to(acc), beta.to(acc)
    if g is not None:
        g = g.to(acc)
    # chunk index first: every per-chunk slice of the loop below is then a contiguous block
    qc, kc, vc = (rearrange(x, "b h (n c) d -> n b h c d", c=c) for x in (q * scale, k, v))
    bc = rearrange(beta, "b h (n c) -> n b h c", c=c)[..., None]  # [N, B, H, C, 1]
    kt = kc.transpose(-1, -2)
    k_w, v_u = kc * bc, vc * bc
    a = k_w @ kt  # β_i k_iᵀk_j, [N, B, H, C, C]; the solve reads only its strictly lower part
    attn = qc @ kt  # scale·q_iᵀk_j
    if g is not None:
        gc = rearrange(g, "b h (n c) -> n b h c", c=c)
        decay = segment_sums(gc).exp()  # e^{Γ_ij}, 0 above the diagonal (so it is also the causal mask)
        g_in = gc.cumsum(-1)  # G_i from the chunk start: e^{G_i} <= 1
        a = a * decay
        attn = attn * decay
        e_in = g_in.exp()[..., None]  # [N, B, H, C, 1]
        k_w = k_w * e_in
        qc = qc * e_in
        k_out = kc * decay[..., -1, :, None]  # e^{G_C − G_j} k_j: Γ's last row
        decays = g_in[..., -1].exp()  # e^{G_C}, [N, B, H]
    else:
        attn = attn.tril()
        k_out, decays = kc, None
    # the UT transform T = (I + A)⁻¹ by one unit-lower-triangular solve, then W and U as matmuls
    t_inv = ut_transform(a)  # [N, B, H, C, C]
    w = t_inv @ k_w  # [N, B, H, C, d_k]
    u = t_inv @ v_u  # [N, B, H, C, d_v]

    k_out_t = rearrange(k_out, "n b h c d -> n (b h) d c").contiguous()
    flat = [rearrange(x, "n b h c d -> n (b h) c d") for x in (w, u)]
    states, vn = _InterChunk.apply(*flat, k_out_t, None if decays is None else decays.reshape(-1, b * h, 1, 1),
                                   s0.reshape(b * h, dk, dv))
    s_prev = states[:-1].view(-1, b, h, dk, dv)  # [N, B, H, d_k, d_v]: the state before each chunk
    s = states[-1].view(b, h, dk, dv)
    vn = vn.view(-1, b, h, c, dv)  # [N, B, H, C, d_v]
    o = qc @ s_prev + attn @ vn
    return rearrange(o, "n b h c d -> b h (n c) d").to(out_dtype), s
