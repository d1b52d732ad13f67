"""AFT-local fast path (Zhai et al. 2021, "An Attention Free Transformer", Sec. 3.2), blocked: O(T·window·C)
time, O(T·C + T·window) memory, never a ``[T, T]`` tensor.

AFT-local is AFT-full (Eq. 2) with w_{t,t'} = 0 outside the band |t − t'| < s (s = ``window``). Splitting each
query's keys into "all" and "band", with e_t' = exp(K_t' − M) (M a per-channel stabiliser):

    num_t = e^{−μ_t}·Σ_{t' allowed} e_t' V_t'  +  Σ_{t' in band} (e^{w_{t,t'} − μ_t} − e^{−μ_t}) e_t' V_t'
    den_t = the same with V = 1,            Y_t = σ(Q_t) ⊙ num_t / den_t

where μ_t = max(0, max_band w_{t,·}) keeps every exponent <= 0 (it cancels in the ratio). The first sum is
AFT-simple's (a per-channel total, or a causal prefix sum from ``simple.causal_prefix``). For the band sum the
sequence is cut into blocks of L >= s − 1 positions, so a query block reaches only its own block and its two
neighbours: the band is three ``[L, L]`` coefficient blocks (previous, same, next; built by skewing the rows of the
band biases) times the ``[L, 2C]`` terms [e·V, e] of those blocks — three batched matmuls over zero-copy block
slices accumulated in place (``block_tridiagonal_matmul``, its own backward), no gathered spans.
Causal: only previous and same blocks; each block c has its own stabiliser M_c (the running max at its end, from
``simple.causal_prefix``), so the previous block's terms are rescaled by e^{M_{c−1} − M_c} <= 1.
Non-causal, the whole computation from q, k, v to the output is one autograd function
(``_AftLocalBidirectional``, hand-written backward) that allocates each full-size buffer once and works in place on
it; the causal form is composed of autograd ops around ``block_tridiagonal_matmul``.
Same semantics as ``naive.aft_local``.

Band biases ``w_band``: ``[>= T, 2s − 1]``, column δ + s − 1 holds offset δ = t' − t (causal uses δ <= 0 only).
Dtypes: everything runs in float32 (float64 for float64 inputs), the band matmuls included even for bf16 inputs:
they are a small part of the cost (2·T·3L·2C flops), and in bf16 the gradient of the band biases, a difference of
numerator and denominator terms that nearly cancel, lost 2-3x the precision of the naive bf16 form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..amp import no_autocast
from .simple import causal_prefix, finite_or_zero, first_rows, mask_keys, ratio_of_halves, stat_dtype


def default_block(window: int) -> int:
    """Block L: a power of two >= window − 1 (the band must fit in the neighbouring blocks), at least 32 and at
    most 128 unless the window needs more (bigger blocks waste more out-of-band coefficients)."""
    return int(max(min(128, max(32, 1 << max(0, window - 1).bit_length())), 1 << max(0, window - 2).bit_length()))


def skew(rows: Tensor) -> Tensor:
    """``[..., L, n]`` -> ``[..., L, L + n − 1]`` with row i shifted right by i (zeros elsewhere)."""
    *lead, l, n = rows.shape
    padded = F.pad(rows, (0, l))  # [..., L, n + L]
    flat = padded.reshape(*lead, l * (n + l))[..., : l * (n + l - 1)]
    return flat.reshape(*lead, l, n + l - 1)


def band_blocks(w_band: Tensor, window: int, t: int, lb: int, causal: bool, dtype: torch.dtype
                ) -> tuple[Tensor, Tensor]:
    """Coefficients e^{w − μ} − e^{−μ} of every block as ``[nb, L, 3L]`` (columns: previous, same, next block's
    keys) and e^{−μ} ``[nb, L, 1]``; zero outside the band, the sequence and (causal) the past."""
    s = window
    nb = -(-t // lb)
    nw = s if causal else 2 * s - 1  # offsets δ = u − (s − 1), u in [0, nw)
    wr = F.pad(w_band[:t, :nw].to(dtype), (0, 0, 0, nb * lb - t))  # [nb·L, nw]
    pos = torch.arange(nb * lb, device=w_band.device)[:, None]
    key = pos + torch.arange(nw, device=w_band.device)[None, :] - (s - 1)
    valid = (pos < t) & (key >= 0) & (key < t)
    mu = finite_or_zero(wr.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)).clamp_min(0.0)
    # e^{w−μ} − e^{−μ}; for μ = 0 (all w <= 0) expm1 avoids the cancellation
    coef = torch.where(mu > 0, torch.exp(wr - mu) - torch.exp(-mu), torch.expm1(wr)).masked_fill(~valid, 0.0)
    # row i of block c: key cL + i − (s−1) + u sits at column L + i − (s−1) + u of the 3-block frame
    rows = F.pad(coef.view(nb, lb, nw), (lb - (s - 1), 0))  # [nb, L, L − s + 1 + nw]
    e3 = skew(rows)  # [nb, L, 2L − s + nw]
    e3 = F.pad(e3, (0, 3 * lb - e3.shape[-1]))  # [nb, L, 3L]
    return e3, torch.exp(-mu).view(nb, lb, 1)


class _BlockTridiagonal(torch.autograd.Function):
    """``y[:, j] = A_prev[j] x_prev[:, j − 1] + A_same[j] x[:, j] + A_next[j] x[:, j + 1]`` for the coefficient blocks
    ``a [nb, L, 3L]`` (columns: previous | same | next block) and terms ``x, x_prev [B, nb, L, N]`` (missing
    neighbours count as 0). Every product is a batched matmul over zero-copy block slices, accumulated in place
    (``baddbmm_``): no rolled, concatenated or zero-filled full-size copies, forward or backward."""

    @staticmethod
    def forward(ctx, a, x, x_prev, use_next):
        y = _tridiagonal(a, x, x_prev, use_next, torch.empty_like(x))
        ctx.save_for_backward(a, x, x_prev)
        ctx.use_next = use_next
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        a, x, x_prev = ctx.saved_tensors
        same_x = x_prev is x
        da = _tridiagonal_grad_a(a, x, x_prev, ctx.use_next, dy) if ctx.needs_input_grad[0] else None
        dx = dx_prev = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dx = torch.empty_like(x)
            dx_prev = dx if same_x else torch.zeros_like(x_prev)
            _tridiagonal_grad_x(a, ctx.use_next, dy, dx, dx_prev)
            if same_x:
                dx_prev = None
        return da, dx, dx_prev, None


def _tridiagonal(a: Tensor, x: Tensor, x_prev: Tensor, use_next: bool, y: Tensor) -> Tensor:
    """``y[:, j] = A_prev[j] x_prev[:, j − 1] + A_same[j] x[:, j] + A_next[j] x[:, j + 1]`` into ``y``."""
    nb, lb = a.shape[0], a.shape[1]
    a_prev, a_same, a_next = a[..., :lb], a[..., lb:2 * lb], a[..., 2 * lb:]
    for i in range(x.shape[0]):
        torch.matmul(a_same, x[i], out=y[i])
        if nb > 1:
            y[i, 1:].baddbmm_(a_prev[1:], x_prev[i, :-1])
            if use_next:
                y[i, :-1].baddbmm_(a_next[:-1], x[i, 1:])
    return y


def _tridiagonal_grad_a(a: Tensor, x: Tensor, x_prev: Tensor, use_next: bool, dy: Tensor) -> Tensor:
    """d a ``[nb, L, 3L]`` of ``_tridiagonal`` for the output gradient ``dy``."""
    nb, lb = a.shape[0], a.shape[1]
    parts = torch.zeros(3, nb, lb, lb, dtype=a.dtype, device=a.device)  # d a_prev, d a_same, d a_next
    for i in range(x.shape[0]):
        parts[1].baddbmm_(dy[i], x[i].transpose(1, 2))
        if nb > 1:
            parts[0, 1:].baddbmm_(dy[i, 1:], x_prev[i, :-1].transpose(1, 2))
            if use_next:
                parts[2, :-1].baddbmm_(dy[i, :-1], x[i, 1:].transpose(1, 2))
    return parts.permute(1, 2, 0, 3).reshape(nb, lb, 3 * lb)


def _tridiagonal_grad_x(a: Tensor, use_next: bool, dy: Tensor, dx: Tensor, dx_prev: Tensor) -> None:
    """d x into ``dx`` and d x_prev into ``dx_prev`` (zero-filled, or ``dx`` itself when x_prev is x)."""
    nb, lb = a.shape[0], a.shape[1]
    a_prev, a_same, a_next = (a[..., :lb].transpose(1, 2), a[..., lb:2 * lb].transpose(1, 2),
                              a[..., 2 * lb:].transpose(1, 2))
    for i in range(dy.shape[0]):
        torch.matmul(a_same, dy[i], out=dx[i])
        if nb > 1:
            dx_prev[i, :-1].baddbmm_(a_prev[1:], dy[i, 1:])
            if use_next:
                dx[i, 1:].baddbmm_(a_next[:-1], dy[i, :-1])


class _AftLocalBidirectional(torch.autograd.Function):
    """Non-causal AFT-local from q, k, v to the output in one function, each full-size buffer allocated once and
    reused in place (autograd's chain of exp, products, cat, sums, ratio and sigmoid made ~20 full-size temporaries
    per call; at T=65536 their page faults were half the time: docs/architecture.md, CPU facts).

    Inputs: q, k, v ``[B, T, C]``; the band coefficients ``e3 [nb, L, 3L]`` and ``base = e^{−μ} [nb, L, 1]`` from
    ``band_blocks`` (differentiable: their gradients flow on to the band biases); ``valid`` ``[B, T]`` bool or None.
    Everything runs in float32 (float64 for float64), as the autograd form did.
    """

    @staticmethod
    def forward(ctx, q, k, v, e3, base, valid):
        b, t, c = q.shape
        nb, lb = e3.shape[0], e3.shape[1]
        sd = e3.dtype
        x = torch.empty(b, nb * lb, 2 * c, dtype=sd, device=q.device)  # [e·V, e], padded rows 0
        x[:, t:].zero_()
        ev, e = x[:, :t, :c], x[:, :t, c:]
        e.copy_(k)
        if valid is not None:
            e.masked_fill_(~valid[..., None], float("-inf"))
        e.sub_(finite_or_zero(e.amax(dim=1, keepdim=True))).exp_()  # e^{K − M}, M per (batch, channel)
        ev.copy_(v)
        ev.mul_(e)
        g_nd = x.sum(dim=1)  # [B, 2C]: every key's terms
        xb = x.view(b, nb, lb, 2 * c)
        nd = _tridiagonal(e3, xb, xb, True, torch.empty_like(xb))  # the band
        nd.addcmul_(base, g_nd[:, None, None])  # + e^{−μ}·(all keys)
        nd = nd.view(b, nb * lb, 2 * c)
        num, den = nd[..., :c], nd[..., c:]
        den.clamp_min_(torch.finfo(sd).tiny)  # a query that sees no key: num = 0, ratio 0 (safe_ratio)
        num.div_(den)  # nd = [ratio, den]
        out = q.to(sd, copy=True).sigmoid_().mul_(num[:, :t]).to(q.dtype)
        ctx.save_for_backward(q, v, e3, base, x, nd, g_nd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, v, e3, base, x, nd, g_nd = ctx.saved_tensors
        b, t, c = q.shape
        nb, lb = e3.shape[0], e3.shape[1]
        sd = e3.dtype
        ratio, den = nd[:, :t, :c], nd[:, :t, c:]
        sig = q.to(sd, copy=True).sigmoid_()
        dnd = torch.zeros(b, nb * lb, 2 * c, dtype=sd, device=q.device)  # [d num, d den], padded rows 0
        dnum, dden = dnd[:, :t, :c], dnd[:, :t, c:]
        dnum.copy_(dy)
        dnum.mul_(sig)  # d ratio = dy·σ(q)
        dq = (dnum * ratio).mul_(sig.neg_().add_(1.0)).to(q.dtype)  # dy·σ(q)·ratio·(1 − σ(q))
        dnum.div_(den)  # d num = d ratio / den
        torch.mul(dnum, ratio, out=dden).neg_()  # d den = −d ratio·ratio / den (0 where den was clamped: num = 0)
        dnd4 = dnd.view(b, nb, lb, 2 * c)
        # nd = band + base·g_nd: base [nb, L, 1] sums over batch and channels; g_nd [B, 2C] over blocks and rows
        dbase = torch.einsum("bnlc,bc->nl", dnd4, g_nd)[..., None]
        dg_nd = torch.einsum("bnlc,nl->bc", dnd4, base[..., 0])
        xb = x.view(b, nb, lb, 2 * c)
        de3 = _tridiagonal_grad_a(e3, xb, xb, True, dnd4) if ctx.needs_input_grad[3] else None
        dx = torch.empty_like(dnd4)
        _tridiagonal_grad_x(e3, True, dnd4, dx, dx)
        dx = dx.view(b, nb * lb, 2 * c)[:, :t]
        dx.add_(dg_nd[:, None])  # every key is in the all-keys sums
        e = x[:, :t, c:]
        dxv, dxe = dx[..., :c], dx[..., c:]
        dv = (dxv * e).to(v.dtype)
        # 16-bit V widened first into dnd's free front (a mixed-dtype addcmul_ is 2.4x slower at 64K)
        vw = v if v.dtype == sd else dnd[:, :t, :c].copy_(v)
        dxe.addcmul_(dxv, vw)  # d e = d(e·V)·V + d e
        dk = dxe.mul_(e).to(q.dtype)  # through exp (M is a detached stabiliser); padded keys: e = 0
        return dq, dk, dv, de3, dbase, None


def block_tridiagonal_matmul(a: Tensor, x: Tensor, x_prev: Tensor | None = None, *, use_next: bool = True) -> Tensor:
    """Block-tridiagonal matrix times terms, differentiable in ``a``, ``x`` and ``x_prev``.

    Args:
        a: ``[nb, L, 3L]`` coefficient blocks; block row j has ``A_prev[j] = a[j, :, :L]`` (for block j − 1),
            ``A_same[j] = a[j, :, L:2L]``, ``A_next[j] = a[j, :, 2L:]`` (for block j + 1).
        x: ``[B, nb, L, N]`` terms. x_prev: the terms the previous-block products read (default ``x``; the causal
            form passes x rescaled to the receiving block's stabiliser). use_next: include the next-block products.

    Returns:
        ``[B, nb, L, N]``, ``y[:, j] = A_prev[j] x_prev[:, j − 1] + A_same[j] x[:, j] + A_next[j] x[:, j + 1]``.
    """
    if a.dim() != 3 or x.dim() != 4 or a.shape[0] != x.shape[1] or a.shape[2] != 3 * a.shape[1] \
            or x.shape[2] != a.shape[1]:
        raise ValueError(f"a must be [nb, L, 3L] and x [B, nb, L, N], got a {tuple(a.shape)}, x {tuple(x.shape)}")
    x_prev = x if x_prev is None else x_prev
    if x_prev.shape != x.shape:
        raise ValueError(f"x_prev must have x's shape {tuple(x.shape)}, got {tuple(x_prev.shape)}")
    return _BlockTridiagonal.apply(a, x, x_prev, use_next)


def aft_local(q: Tensor, k: Tensor, v: Tensor, w_band: Tensor, window: int, *, causal: bool = False,
              key_padding_mask: Tensor | None = None, block_size: int | None = None) -> Tensor:
    """AFT-local: q, k, v ``[B, T, C]``, ``w_band`` ``[>= T, 2·window − 1]`` -> ``[B, T, C]``. ``block_size``: L,
    at least ``window − 1`` (default ``default_block(window)``)."""
    b, t, c = q.shape
    lb = block_size or default_block(window)
    if lb < window - 1:
        raise ValueError(f"block_size={lb} must be >= window - 1 = {window - 1}")
    nb = -(-t // lb)
    sd = stat_dtype(q)
    e3, base = band_blocks(w_band, window, t, lb, causal, sd)
    if not causal:
        with no_autocast(q.device):
            return _AftLocalBidirectional.apply(q, k, v, e3, base, key_padding_mask)
    kf = mask_keys(k.to(sd), key_padding_mask)
    x, g_nd, m = causal_prefix(kf, v.to(sd), lb)  # x, g_nd [B, nb, L, 2C]; m [B, nb, C]
    x_prev = x
    if nb > 1:
        # block j's terms as block j + 1 sees them, rescaled to its stabiliser: e^{M_j − M_{j+1}} <= 1 (the last
        # block's factor is unused)
        decay = F.pad(torch.exp(m[:, :-1] - m[:, 1:]), (0, 0, 0, 1), value=1.0).repeat(1, 1, 2)  # [B, nb, 2C]
        x_prev = x * decay[:, :, None]
    band = block_tridiagonal_matmul(e3, x, x_prev, use_next=False)  # [B, nb, L, 2C]
    # in place on band (block_tridiagonal_matmul keeps its inputs, not its output): no full-size product or sum
    # tensor, each of which would be a fresh allocation, page-faulted (docs/architecture.md, CPU facts)
    nd = band.addcmul_(base, g_nd)  # [B, nb, L, 2C]
    y = first_rows(ratio_of_halves(nd), t)
    return (torch.sigmoid(q.to(sd)) * y).to(q.dtype)
