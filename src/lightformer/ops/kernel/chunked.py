"""Kernel (linear) attention in O(T·m·d) time and O(T·d + m·d) memory, forward and backward.

Same semantics as the oracles in ``ops.kernel.naive`` (conventions there), but taking the *pre-feature* q and k
and a token-local feature map, so that no ``[T, m]`` feature tensor is ever stored: features are computed chunk by
chunk in the forward pass and recomputed chunk by chunk in the backward pass (a ``torch.autograd.Function``).

Numerator and denominator in one product. With V̄ = [V, 1] (``[T, d + 1]``; padded keys get V̄ = 0, which removes
them from both sums exactly as φ(K) = 0 would), kernel attention is N = A V̄ with A = φ(Q)φ(K)ᵀ (causally masked),
out = N[:, :d] / (N[:, d] + eps). ``kernel_product`` computes N without ever forming A beyond a chunk:

Non-causal (Katharopoulos et al. 2020, Eq. 5-6): S̄ = Σ_j φ(K_j)V̄_jᵀ ``[m, d + 1]`` over key chunks, then
N = φ(Q)S̄ over query chunks.

Causal (Eq. 8-11 evaluated per chunk of C tokens, the chunkwise-parallel form): with S̄ the sum over all previous
chunks,   N_c = tril(φ(Q_c)φ(K_c)ᵀ) V̄_c + φ(Q_c) S̄,   then S̄ += φ(K_c)ᵀV̄_c:
the masked quadratic form inside a chunk and a running ``[m, d + 1]`` state across chunks, never a ``[T, m, d]``
prefix-sum tensor. Cost O(T·C·(m + d) + T·m·d).

Grouping. Chunks are processed ``G`` at a time (a group of L = G·C tokens, L chosen so that a ``[B, H, L, m]``
feature tensor stays below ``GROUP_ELEMENTS``): within a group the intra-chunk products, the chunk states
φ(K_c)ᵀV̄_c ``[G, m, d + 1]`` and their exclusive prefix sums are single batched ops, and the running state carries
across groups. This keeps memory bounded by the group (never O(T·m·d)) while the number of tensor ops, which
dominates on a busy 2-core CPU, is O(T / L) rather than O(T / C). T is zero-padded to a multiple of C (padded keys
have V̄ = 0, padded queries are dropped).

Backward (N is bilinear in φ(Q), φ(K) and linear in V̄):
    dφ(Q_i) = Σ_{j≤i} φ(K_j) (V̄_j·dN_i),   dφ(K_j) = Σ_{i≥j} φ(Q_i) (V̄_j·dN_i),   dV̄_j = Σ_{i≥j} (φ(Q_i)·φ(K_j)) dN_i
(no j ≤ i restriction when non-causal). Causal: one pass in group order rebuilds S̄ and gives dφ(Q); one pass in
reverse order accumulates dS̄ = Σ_{later i} φ(Q_i)dN_iᵀ and gives dφ(K), dV̄. Feature gradients use the map's own
``grad(x, φ, dφ, is_query)`` when it has one (``features.FavorPlus``), else autograd through the map on each chunk
alone. Every contraction is a matmul; the only elementwise work is the
feature map itself.

Dtypes: float64 is computed in float64. Otherwise the features and the states S̄ are float32 and the matmuls run in
the dtype of V̄ (bf16 matmuls on AMX when the inputs are bf16); N is returned in float32.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from ..amp import no_autocast

FeatureMap = Callable[[Tensor, bool], Tensor]  # (x [B, H, C, dk] float32/64, is_query) -> φ [B, H, C, m]

#: elements of one [B, H, L, m] feature tensor per group (2^21 float32 = 8 MiB). Measured fwd+bwd (D=512, H=8, B=1,
#: fp32): performer m=256 at T=4096 ~450 -> ~340 ms, at 16384 ~2200 -> ~1810 ms; linear at 16384 ~1300 -> ~1130 ms,
#: against 2^23. Per-group tensors of this size are still fresh mmaps (glibc's dynamic threshold only rises above
#: a freed chunk's size), so maps that take out= get reused buffers (``_GroupBuffers``).
GROUP_ELEMENTS = 2 ** 21


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mm(a: Tensor, b: Tensor, dtype: torch.dtype, out: torch.dtype) -> Tensor:
    """a @ b with both operands in ``dtype``, result in ``out``."""
    return (a.to(dtype) @ b.to(dtype)).to(out)


def _mm_add(out: Tensor, a: Tensor, b: Tensor, mm: torch.dtype) -> Tensor:
    """out += a @ b (batched over the leading dims), fused into one ``baddbmm_`` when no dtype cast is needed."""
    if out.dtype == mm and a.dtype == mm and b.dtype == mm and out.is_contiguous():
        out.view(-1, *out.shape[-2:]).baddbmm_(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
        return out
    return out.add_(_mm(a, b, mm, out.dtype))


def _chunks(x: Tensor, c: int) -> Tensor:
    return rearrange(x, "b h (g c) e -> b h g c e", c=c)


def _exclusive_prefix(sc: Tensor, carry: Tensor | None) -> tuple[Tensor, Tensor]:
    """Chunk states ``[B, H, G, m, e]`` -> (sum of all earlier chunks plus ``carry`` from earlier groups, new carry).
    Shift by one chunk, then an in-place cumsum: exact (no "inclusive minus itself" cancellation, which costs
    float32 digits when large positive features are summed) and without zero-padded copies."""
    prev = torch.empty_like(sc)
    prev[:, :, 1:] = sc[:, :, :-1]
    if carry is None:
        prev[:, :, 0] = 0.0
    else:
        prev[:, :, 0] = carry
    prev.cumsum_(2)
    return prev, prev[:, :, -1] + sc[:, :, -1]


def _exclusive_suffix(sc: Tensor, carry: Tensor | None) -> tuple[Tensor, Tensor]:
    """Chunk values ``[B, H, G, m, e]`` -> (sum of all later chunks plus ``carry`` from later groups, new carry)."""
    rev = torch.empty_like(sc)  # chunk order reversed: rev[:, :, i] = sc[:, :, G − i] for i >= 1
    rev[:, :, 1:] = sc[:, :, 1:].flip(2)
    if carry is None:
        rev[:, :, 0] = 0.0
    else:
        rev[:, :, 0] = carry
    rev.cumsum_(2)
    nxt = rev.flip(2)
    return nxt, nxt[:, :, 0] + sc[:, :, 0]


def _add(total: Tensor | None, x: Tensor) -> Tensor:
    return x if total is None else total.add_(x)


class _GroupBuffers:
    """Reused ``[B, H, L, m]`` work buffers for the groups of one call, when the feature map takes ``out=``
    (``features.FavorPlus``): a fresh ``[B, H, L, m]`` tensor per group and op is a fresh allocation that glibc
    serves by ``mmap`` (an 8 MiB request equal to the largest freed one stays above its dynamic threshold), so its
    pages fault in on every use (docs/architecture.md, CPU facts). Without ``out=`` support, plain calls."""

    def __init__(self, fmap: FeatureMap, numel: int, dtype: torch.dtype, device: torch.device, count: int,
                 enabled: bool = True):
        self.on = enabled and bool(getattr(fmap, "supports_out", False))
        self.fmap = fmap
        self.flat = [torch.empty(numel, dtype=dtype, device=device) for _ in range(count)] if self.on else []

    def buf(self, i: int, like: Tensor, m: int) -> Tensor | None:
        """Buffer i as ``[*like.shape[:-1], m]`` (the front of the flat buffer: contiguous), or None."""
        if not self.on:
            return None
        shape = (*like.shape[:-1], m)
        return self.flat[i][:math.prod(shape)].view(shape)

    def features(self, x: Tensor, is_query: bool, m: int, i: int = 0) -> Tensor:
        out = self.buf(i, x, m)
        return self.fmap(x, is_query) if out is None else self.fmap(x, is_query, out=out)


def _mm_into(a: Tensor, b: Tensor, mm: torch.dtype, out: Tensor | None, acc: torch.dtype) -> Tensor:
    """``a @ b`` with operands in ``mm``, result in ``acc``; into ``out`` when given."""
    if out is None:
        return _mm(a, b, mm, acc)
    if a.dtype == b.dtype == mm == acc:
        return torch.matmul(a, b, out=out)
    return out.copy_(a.to(mm) @ b.to(mm))


class _KernelProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, va: Tensor, s0: Tensor | None, fmap: FeatureMap, causal: bool, c: int,
                group: int, m: int) -> tuple[Tensor, Tensor]:
        acc, mm = _acc(q.dtype), va.dtype
        b, h, t, _ = q.shape
        n_out = torch.empty(b, h, t, va.shape[-1], dtype=acc, device=q.device)  # [B, H, T, d + 1]
        s = None if s0 is None else s0.to(acc)  # running state [B, H, m, d + 1] (causal: starts at S̄_0)
        with torch.no_grad():
            if not causal:
                bufs = _GroupBuffers(fmap, b * h * group * m, acc, q.device, 1)
                for lo in range(0, t, group):
                    fk = bufs.features(k[:, :, lo:lo + group].to(acc), False, m)  # [B, H, L, m]
                    s = _add(s, _mm(fk.transpose(-1, -2), va[:, :, lo:lo + group], mm, acc))
                s_mm = s.to(mm)
                for lo in range(0, t, group):
                    fq = bufs.features(q[:, :, lo:lo + group].to(acc), True, m)
                    n_out[:, :, lo:lo + group] = _mm(fq, s_mm, mm, acc)
            else:
                for lo in range(0, t, group):
                    fq = _chunks(fmap(q[:, :, lo:lo + group].to(acc), True).to(mm), c)  # [B, H, G, C, m]
                    fk = _chunks(fmap(k[:, :, lo:lo + group].to(acc), False).to(mm), c)
                    vb = _chunks(va[:, :, lo:lo + group], c)  # [B, H, G, C, e]
                    sc = _mm(fk.transpose(-1, -2), vb, mm, acc)  # chunk states [B, H, G, m, e]
                    prev, s = _exclusive_prefix(sc, s)
                    n = _mm(fq, prev, mm, acc)  # earlier chunks
                    a = torch.matmul(fq, fk.transpose(-1, -2)).tril_()  # intra-chunk [B, H, G, C, C]
                    n = _mm_add(n, a, vb, mm)
                    n_out[:, :, lo:lo + group] = rearrange(n, "b h g c e -> b h (g c) e")
        ctx.save_for_backward(q, k, va, s if not causal else s0)
        ctx.fmap, ctx.causal, ctx.c, ctx.group, ctx.m = fmap, causal, c, group, m
        if not causal:
            ctx.mark_non_differentiable(s)  # Σ over all keys: not a state anything continues from
        return n_out, s

    @staticmethod
    def backward(ctx, dn: Tensor, ds_final: Tensor | None):
        q, k, va, saved_state = ctx.saved_tensors
        fmap, causal, c, group, m = ctx.fmap, ctx.causal, ctx.c, ctx.group, ctx.m
        acc, mm = _acc(q.dtype), va.dtype
        t = q.shape[2]
        dn = dn.to(mm)
        dq, dk, dva = torch.empty_like(q), torch.empty_like(k), torch.empty_like(va)
        starts = list(range(0, t, group))

        analytic = getattr(fmap, "grad", None)  # the map's own input gradient, else autograd through it
        # non-causal, with the map's own gradient (no graph): φ and dφ of every group in two reused buffers
        bufs = _GroupBuffers(fmap, q.shape[0] * q.shape[1] * group * m, acc, q.device, 2,
                             enabled=analytic is not None and not causal)

        def features_with_grad(x: Tensor, is_query: bool) -> tuple[Tensor, Tensor]:
            if analytic is not None:
                xc = x.to(acc)
                with torch.no_grad():
                    return xc, bufs.features(xc, is_query, m)
            with torch.enable_grad():
                xc = x.detach().to(acc).requires_grad_(True)
                return xc, fmap(xc, is_query)

        def feature_grad(xc: Tensor, phi: Tensor, dphi: Tensor, is_query: bool) -> Tensor:
            """dL/dx from dL/dφ (``dphi`` may be overwritten)."""
            if analytic is not None:
                return analytic(xc, phi, dphi, is_query)
            return torch.autograd.grad(phi, xc, dphi)[0]

        if not causal:
            s_mm = saved_state.to(mm)
            ds = None
            for lo in starts:
                qc, fq = features_with_grad(q[:, :, lo:lo + group], True)
                dn_c = dn[:, :, lo:lo + group]
                dphi = _mm_into(dn_c, s_mm.transpose(-1, -2), mm, bufs.buf(1, qc, m), acc)
                ds = _add(ds, _mm(fq.detach().transpose(-1, -2), dn_c, mm, acc))  # [B, H, m, e] (before dφ is used)
                dq[:, :, lo:lo + group] = feature_grad(qc, fq, dphi, True)
            ds_mm = ds.to(mm)
            for lo in starts:
                kc, fk = features_with_grad(k[:, :, lo:lo + group], False)
                va_c = va[:, :, lo:lo + group]
                dva[:, :, lo:lo + group] = _mm(fk.detach(), ds_mm, mm, va.dtype)
                dphi = _mm_into(va_c, ds_mm.transpose(-1, -2), mm, bufs.buf(1, kc, m), acc)
                dk[:, :, lo:lo + group] = feature_grad(kc, fk, dphi, False)
            return dq, dk, dva, None, None, None, None, None, None

        def unchunk(x: Tensor) -> Tensor:
            return rearrange(x, "b h g c e -> b h (g c) e")

        # pass 1, group order: rebuild the states of earlier chunks (from S̄_0) and get dφ(Q)
        s = saved_state
        for lo in starts:
            qc, fq = features_with_grad(q[:, :, lo:lo + group], True)
            with torch.no_grad():
                fk = _chunks(fmap(k[:, :, lo:lo + group].to(acc), False).to(mm), c)  # [B, H, G, C, m]
            vb, dnb = _chunks(va[:, :, lo:lo + group], c), _chunks(dn[:, :, lo:lo + group], c)
            sc = _mm(fk.transpose(-1, -2), vb, mm, acc)  # [B, H, G, m, e]
            m_ij = (dnb @ vb.transpose(-1, -2)).tril_()  # [B, H, G, C, C]: V̄_j·dN_i for j <= i
            prev, s = _exclusive_prefix(sc, s)
            dfq = _mm_add(_mm(m_ij, fk, mm, acc), dnb, prev.transpose(-1, -2), mm)
            dq[:, :, lo:lo + group] = feature_grad(qc, fq, unchunk(dfq), True)
        # pass 2, reverse group order: accumulate dS̄ of later chunks (from dS̄_T: every key is in the final
        # state) and get dφ(K), dV̄; what is left at the end is dS̄_0 = dS̄_T + Σ_i φ(Q_i)ᵀdN_i
        ds = None if ds_final is None else ds_final.to(acc)
        for lo in reversed(starts):
            with torch.no_grad():
                fq = _chunks(fmap(q[:, :, lo:lo + group].to(acc), True).to(mm), c)
            kc, fk_g = features_with_grad(k[:, :, lo:lo + group], False)
            fk = _chunks(fk_g.detach().to(mm), c)
            vb, dnb = _chunks(va[:, :, lo:lo + group], c), _chunks(dn[:, :, lo:lo + group], c)
            dsc = _mm(fq.transpose(-1, -2), dnb, mm, acc)  # [B, H, G, m, e]
            ds_next, ds = _exclusive_suffix(dsc, ds)
            ds_next = ds_next.to(mm)
            m_ij = (dnb @ vb.transpose(-1, -2)).tril_()
            a = (fq @ fk.transpose(-1, -2)).tril_()  # [B, H, G, C, C]
            dfk = _mm_add(_mm(m_ij.transpose(-1, -2), fq, mm, acc), vb, ds_next.transpose(-1, -2), mm)
            dvb = _mm_add(_mm(a.transpose(-1, -2), dnb, mm, acc), fk, ds_next, mm)
            dk[:, :, lo:lo + group] = feature_grad(kc, fk_g, unchunk(dfk), False)
            dva[:, :, lo:lo + group] = unchunk(dvb)
        ds0 = None if saved_state is None or ds is None else ds.to(saved_state.dtype)
        return dq, dk, dva, ds0, None, None, None, None, None


def group_size(b: int, h: int, m: int, chunk_size: int, t: int) -> int:
    """Tokens per group L: a multiple of ``chunk_size`` with B·H·L·m <= ``GROUP_ELEMENTS`` (at least one chunk),
    not beyond the (chunk-padded) length."""
    per_chunk = b * h * chunk_size * max(m, chunk_size)
    chunks = max(1, GROUP_ELEMENTS // per_chunk)
    return min(chunks, -(-t // chunk_size)) * chunk_size


def kernel_product(q: Tensor, k: Tensor, va: Tensor, feature_map: FeatureMap, *, causal: bool,
                   chunk_size: int, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """N = A V̄ with A = φ(q)φ(k)ᵀ (``tril`` when causal), chunked; see the module docstring.

    q, k ``[B, H, T, dk]`` (pre-feature), va ``[B, H, T, e]``, causal ``initial_state`` S̄_0 ``[B, H, m, e]`` (the
    sum φ(K)ᵀV̄ over earlier tokens; None = 0) -> (N ``[B, H, T, e]``, S̄_T ``[B, H, m, e]``), both float32 (float64
    for float64). N_i includes φ(Q_i)S̄_0; S̄_T = S̄_0 + Σ_j φ(K_j)V̄_jᵀ, differentiable in every input."""
    b, h, t, _ = q.shape
    if initial_state is not None and not causal:
        raise ValueError("initial_state: only causal kernel attention continues from a state")
    # q, k arrive as strided views of the fused QKV projection; elementwise feature maps keep that layout, which
    # would make every batched matmul below copy its operand: one copy here instead. 16-bit q, k need none: every
    # group is widened to float32 (a contiguous copy) before its feature map
    if q.dtype == _acc(q.dtype):
        q, k = q.contiguous(), k.contiguous()
    va = va.contiguous()
    with torch.no_grad():
        m = feature_map(q[:1, :1, :1].to(_acc(q.dtype)), True).shape[-1]
    if initial_state is not None and initial_state.shape != (b, h, m, va.shape[-1]):
        raise ValueError(f"initial_state must be [B, H, m, e]={(b, h, m, va.shape[-1])}, "
                         f"got {tuple(initial_state.shape)}")
    c = min(chunk_size, t)
    pad = -t % c
    if pad:  # padded keys have V̄ = 0 (no contribution); padded queries are cut off below
        q, k, va = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, va))
    group = group_size(b, h, m, c, t + pad)
    with no_autocast(q.device):  # dtypes are chosen here (module docstring)
        n, s = _KernelProduct.apply(q, k, va, initial_state, feature_map, causal, c, group, m)
    return (n[:, :, :t] if pad else n), s


class _Ratio(torch.autograd.Function):
    """out = N[..., :d] / (N[..., d] + eps), written once in the output dtype; the backward builds dN in one buffer
    (autograd's split, division and cat chain made several full-size temporaries, each a fresh allocation)."""

    @staticmethod
    def forward(ctx, n: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
        num, den = n[..., :-1], n[..., -1:] + eps
        out = torch.empty(num.shape, dtype=dtype, device=n.device)
        torch.div(num, den, out=out)
        ctx.save_for_backward(num, den)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):
        num, den = ctx.saved_tensors
        r = den.reciprocal()  # [..., 1]
        dn = torch.empty(*num.shape[:-1], num.shape[-1] + 1, dtype=num.dtype, device=num.device)
        g = dn[..., :-1]
        g.copy_(dout)  # widened first (mixed-dtype elementwise ops are slow)
        g.mul_(r)  # dL/dnum = dout / den
        torch.mul(torch.linalg.vecdot(g, num).unsqueeze_(-1), r, out=dn[..., -1:]).neg_()  # dL/dden
        return dn, None, None


def kernel_attention(q: Tensor, k: Tensor, v: Tensor, feature_map: FeatureMap, *, causal: bool, eps: float,
                     chunk_size: int, key_padding_mask: Tensor | None = None,
                     initial_state: tuple[Tensor, Tensor] | None = None,
                     output_final_state: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Chunked kernel attention, see the module docstring.

    Args:
        q, k: ``[B, H, T, dk]`` *before* the feature map; v: ``[B, H, T, d]``; same dtype (float64/32, bf16).
        feature_map: ``(x, is_query) -> φ(x)``, token-local, ``[B, H, C, dk] -> [B, H, C, m]``, differentiable.
        causal: query i sees keys j <= i.
        eps: added to the denominator (> 0).
        chunk_size: tokens per chunk C (>= 1); bounds the feature memory (B·H·C·m) and, when causal, sets the size
            of the intra-chunk quadratic part.
        key_padding_mask: ``[B, T]`` bool, True = real key; padded keys drop out of both sums (and of the state).
        initial_state: causal only: ``(S [B, H, m, d], z [B, H, m])`` = (Σ φ(k)vᵀ, Σ φ(k)) over the tokens before
            this call (Katharopoulos et al. 2020, Eq. 16-20); None = the empty state.
        output_final_state: also return the state after the last token (causal only).

    Returns:
        ``(o, final_state)``: o ``[B, H, T, d]`` in the dtype of v, equal to ``naive.kernel_attention(φ(q), φ(k),
        v, ...)`` continued from ``initial_state``; ``final_state = (S, z)`` in float32 (float64 for float64)
        when ``output_final_state``, else None. Gradients flow into ``initial_state`` and out of the final state.

    Raises:
        ValueError: ``chunk_size < 1``, ``eps <= 0``, a state with ``causal=False``, or a state of wrong shape.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError("initial_state/output_final_state: only causal kernel attention has a state")
    va = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # V̄ = [V, 1], [B, H, T, d + 1]
    if key_padding_mask is not None:
        va = va * key_padding_mask[:, None, :, None].to(va.dtype)
    s0 = None
    if initial_state is not None:
        s_init, z_init = initial_state
        s0 = torch.cat([s_init, z_init[..., None]], dim=-1)  # S̄ = [S, z]: the state of V̄
    n, s_bar = kernel_product(q, k, va, feature_map, causal=causal, chunk_size=chunk_size, initial_state=s0)
    o = _Ratio.apply(n, eps, v.dtype)
    return o, ((s_bar[..., :-1], s_bar[..., -1]) if output_final_state else None)
