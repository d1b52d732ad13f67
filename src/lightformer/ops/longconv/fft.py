"""The FFT convolution of the long-convolution mixers (S4D, H3, Hyena, LMU): the same semantics as ``naive``, in
O(T·log T) per channel.

A causal convolution of T inputs with an L-tap kernel is the first T outputs of their linear convolution, which is a
circular convolution of length n >= T + L − 1 (no wrap-around reaches the first T outputs):

    y = irfft(rfft(u, n) · rfft(k, n), n)[:T],        n = the next 2^a·3^b·5^c >= T + min(L, T) − 1

(n = 2T for a full-length kernel at T a power of two). ``_FFTConv`` is an autograd Function whose backward is two
more FFT correlations (du = irfft(G·conj(K̂)), dk = irfft(Σ G·conj(Û))): it keeps u and the kernel's spectrum K̂
(recomputing Û, as the mixers keep u anyway) instead of autograd's copies of every intermediate, sums the kernel
gradient over the batch in the frequency domain (one inverse FFT per channel, not per row), and broadcasts u
against k (``u [..., 1, T]`` with ``k [d, L]`` gives ``[..., d, T]``: the LMU's one input per memory feeds d
features from one FFT).

Dtypes: the FFT runs in float64 for float64 inputs, else in float32 (no bf16 FFT on CPU; under bf16 autocast the
inputs are upcast, the output is returned in u's dtype). Layout: sequence last, ``[..., C, T]`` (any strides; the
padded buffer of the FFT is one copy anyway).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..amp import no_autocast
from . import kernels


def fast_size(n: int) -> int:
    """The smallest 2^a·3^b·5^c >= n (sizes the FFT handles without slow prime factors)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


#: FLOPs of one real FFT of size n, counted as 2.5·n·log2(n) (half of the 5·n·log2(n) of a complex radix-2 FFT).
RFFT_FLOPS_PER_NLOGN = 2.5


def rfft_flops(n: int) -> float:
    """FLOPs of one real FFT (or its inverse) of size n: 2.5·n·log2(n)."""
    return RFFT_FLOPS_PER_NLOGN * n * max(1.0, math.log2(n))


def conv_flops(seq_len: int, inputs: int, kernels_: int, outputs: int, kernel_len: int | None = None) -> float:
    """FLOPs of ``causal_conv``'s forward: ``inputs`` forward FFTs of u, ``kernels_`` of k, ``outputs`` inverse FFTs
    and products (6 FLOPs per complex multiply-add of n/2+1 bins), n = fast_size(T + L − 1)."""
    n = fast_size(seq_len + min(kernel_len or seq_len, seq_len) - 1)
    return (inputs + kernels_ + outputs) * rfft_flops(n) + outputs * 6.0 * (n // 2 + 1)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _rfft(x: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    buf = x.new_empty(*x.shape[:-1], n, dtype=dtype)
    buf[..., :x.shape[-1]] = x
    buf[..., x.shape[-1]:] = 0.0
    return torch.fft.rfft(buf)


#: elements per float buffer of one channel block of the FFT convolution (32 MiB in float32): the padded inputs,
#: spectra and inverse transforms of a block live at once, never those of all channels
BLOCK_ELEMENTS = 1 << 23


def _blocks(channels: int, rows: int, n: int):
    step = max(1, BLOCK_ELEMENTS // max(1, rows * n))
    for c0 in range(0, channels, step):
        yield c0, min(channels, c0 + step)


class _FFTConv(torch.autograd.Function):
    """u ``[..., C_u, T]`` (C_u = C, or 1 = one input shared by every kernel), k ``[C, L]`` (L <= T) ->
    ``[..., C, T]`` in u's dtype. Runs channel block by channel block (``BLOCK_ELEMENTS``); keeps u and K̂."""

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor) -> Tensor:
        t, (c, lk) = u.shape[-1], k.shape
        n = fast_size(t + lk - 1)
        cd = _compute_dtype(u, k)
        shared = u.shape[-2] == 1 and c > 1
        lead = u.shape[:-2]
        y = torch.empty(*lead, c, t, dtype=u.dtype, device=u.device)
        kf = torch.empty(c, n // 2 + 1, dtype=torch.complex128 if cd == torch.float64 else torch.complex64,
                         device=u.device)
        with no_autocast(u.device):
            uf_shared = _rfft(u, n, cd) if shared else None  # [..., 1, n/2+1]
            for c0, c1 in _blocks(c, math.prod(lead), n):
                kf[c0:c1] = _rfft(k[c0:c1], n, cd)
                uf = uf_shared if shared else _rfft(u[..., c0:c1, :], n, cd)
                y[..., c0:c1, :] = torch.fft.irfft(uf * kf[c0:c1], n=n)[..., :t]
        # u, not its spectrum: the mixers keep u for their own backward anyway (a D skip or a gate multiplies it),
        # so one more rfft in the backward saves a [..., C, n/2+1] complex tensor (2x u's size) per convolution
        ctx.save_for_backward(u if ctx.needs_input_grad[1] else None, kf)
        ctx.meta = (t, lk, n, shared, u.shape, u.dtype, k.dtype)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        u, kf = ctx.saved_tensors
        t, lk, n, shared, ushape, udtype, kdtype = ctx.meta
        c, lead = kf.shape[0], ushape[:-2]
        need_u, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cd = kf.real.dtype
        du = dk = None
        with no_autocast(g.device):
            if need_u:
                du = None if shared else torch.empty(ushape, dtype=udtype, device=g.device)
                du_acc = 0.0  # shared input: Σ over the kernels of G·conj(K̂), one inverse FFT at the end
            if need_k:
                dk = torch.empty(c, lk, dtype=kdtype, device=g.device)
                uf_shared = _rfft(u, n, cd) if shared else None
            for c0, c1 in _blocks(c, math.prod(lead), n):
                gf = _rfft(g[..., c0:c1, :], n, cd)  # [..., C_b, n/2+1]
                if need_u:
                    # du_s = Σ_t k_(t−s) g_t: a correlation, conj(K̂) in frequency
                    prod = gf * kf[c0:c1].conj()
                    if shared:
                        du_acc = du_acc + prod.sum(-2, keepdim=True)
                    else:
                        du[..., c0:c1, :] = torch.fft.irfft(prod, n=n)[..., :t]
                if need_k:
                    # dk_l = Σ_(rows, t) g_t u_(t−l), summed over the rows before the inverse FFT
                    uf = uf_shared if shared else _rfft(u[..., c0:c1, :], n, cd)
                    prod = (gf * uf.conj()).reshape(-1, c1 - c0, gf.shape[-1]).sum(0)
                    dk[c0:c1] = torch.fft.irfft(prod, n=n)[..., :lk]
            if need_u and shared:
                du = torch.fft.irfft(du_acc, n=n)[..., :t].to(udtype)
        return du, dk


def causal_conv(u: Tensor, k: Tensor) -> Tensor:
    """Same as ``naive.causal_conv`` with ``u [..., C, T]`` (or ``[..., 1, T]``: one input for every kernel) and
    ``k [C, L]`` (taps beyond T are unused) -> ``[..., C, T]`` in u's dtype.

    Raises:
        ValueError: k is not ``[C, L]`` or u's channel dimension is neither C nor 1.
    """
    if k.dim() != 2 or u.shape[-2] not in (1, k.shape[0]):
        raise ValueError(f"k must be [C, L] and u [..., C or 1, T]; got k {tuple(k.shape)}, u {tuple(u.shape)}")
    if k.shape[-1] > u.shape[-1]:
        k = k[..., :u.shape[-1]]
    return _FFTConv.apply(u, k)


def diag_ssm(u: Tensor, dtA: Tensor, b_bar: Tensor, c: Tensor, *, initial_state: Tensor | None = None,
             output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """Same as ``naive.diag_ssm``, in parallel: the kernel K_l = 2·Re Σ_n C_n B̄_n exp(ΔA_n·l) by a blockwise
    Vandermonde product (``kernels.vandermonde``, O(C·N·T)), then the FFT convolution y = K * u. An initial state x_0
    adds its free response 2·Re Σ_n C_n exp(ΔA_n·(t+1)) x_(0,n) (another Vandermonde product); the final state is
    x_T = exp(ΔA·T) x_0 + B̄ ⊙ Σ_s exp(ΔA·(T−1−s)) u_s (``kernels.vandermonde_transpose`` of u reversed in time).

    Returns ``(y [..., C, T] in u's dtype, x_T [..., C, N] complex or None)``."""
    t = u.shape[-1]
    with no_autocast(u.device):
        k = kernels.vandermonde(c * b_bar, dtA, t)  # [C, T]
    y = causal_conv(u, k)
    if initial_state is None and not output_final_state:
        return y, None
    with no_autocast(u.device):
        if initial_state is not None:
            free = kernels.vandermonde(c * kernels.cexp(dtA) * initial_state, dtA, t)  # [..., C, T]
            y = (y + free).to(u.dtype)
        final = None
        if output_final_state:
            final = b_bar * kernels.vandermonde_transpose(u.flip(-1), dtA)
            if initial_state is not None:
                final = final + kernels.cexp(dtA * t) * initial_state
    return y, final


def lti_memory(u: Tensor, ab: Tensor, bb: Tensor, *, impulse: Tensor | None = None,
               initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same as ``naive.lti_memory``, in parallel (Chilkuri & Eliasmith 2021, Sec. 3): m = H * u with the impulse
    response H[:, t] = Ā^t B̄ (``kernels.lti_impulse``; pass a cached ``impulse [d, >= T]``), one FFT per input row
    broadcast over the d features. An initial state adds its free response Ā^(t+1) m_0
    (``kernels.lti_free_response``). The final state is m[..., T−1].

    Args: ``u [B, M, T]``, ``ab [d, d]``, ``bb [d]``, ``initial_state [B, M, d]``.
    Returns: ``(m [B, M, d, T] in u's dtype, m_T [B, M, d] in the dtype of Ā)``."""
    t = u.shape[-1]
    if impulse is None:
        impulse = kernels.lti_impulse(ab, bb, t)
    m = causal_conv(u[..., None, :], impulse[:, :t])  # [B, M, d, T]
    if initial_state is not None:
        with no_autocast(u.device):
            m = (m + kernels.lti_free_response(initial_state, ab, t)).to(u.dtype)
    return m, m[..., -1].to(ab.dtype)
