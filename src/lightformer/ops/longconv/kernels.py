"""Kernel generators of the long-convolution mixers: the S4D Vandermonde kernel (and its transpose, the state a
sequence leaves), the Legendre (LMU) state space and its impulse response, and Hyena's positional embedding and
exponential modulation.

Every generator works in the dtype of its parameters (float32 / complex64, or float64 / complex128) and never under
autocast (a bf16 Vandermonde product would be useless: its terms cancel across the N modes).

Powers of a diagonal (complex) Ā over long spans are taken blockwise: Ā^(j·L_b + i) = Ā^(j·L_b) · Ā^i with both
exponents >= 0, so both factors have modulus <= 1 whenever Re(Δ·A) <= 0 (the S4D parameterisation guarantees it);
the product never overflows, unlike exp(a)·exp(−b) over arbitrary spans.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..amp import no_autocast


def cexp(z: Tensor) -> Tensor:
    """exp of a complex tensor as exp(Re z)·(cos(Im z) + i·sin(Im z)) (``torch.polar``): the same value, but
    vectorised real kernels; torch's complex ``exp`` on CPU was 3-10x slower (2.7 ms for [512, 32] complex64)."""
    return torch.polar(torch.exp(z.real.contiguous()), z.imag.contiguous())


def _block(length: int) -> int:
    """L_b: a power of two near sqrt(length), so both factor tables are ~sqrt(L)·N."""
    return 1 << max(0, math.ceil(math.log2(max(1, length)) / 2))


def _powers(dtA: Tensor, exponents: Tensor) -> tuple[Tensor, Tensor]:
    """(Re, Im) of exp(dtA[..., None] · exponents): modulus and phase on real tensors (a complex ``exp`` is ~3x
    slower on CPU). ``dtA [C, N]``, ``exponents [E]`` -> two ``[C, N, E]``."""
    mag = torch.exp(dtA.real[..., None] * exponents)
    phase = dtA.imag[..., None] * exponents
    return mag * torch.cos(phase), mag * torch.sin(phase)


def vandermonde(w: Tensor, dtA: Tensor, length: int) -> Tensor:
    """K[..., c, l] = 2·Re Σ_n w[..., c, n] · exp(dtA[c, n] · l), l = 0 .. length−1 (the S4D kernel, Gu et al. 2022,
    Sec. 3: K = 2·Re(C̄ · V(Ā)) with V the Vandermonde matrix of the modes).

    Args:
        w: ``[..., C, N]`` complex (C·B̄ for the kernel; C·Ā·x_0 for the free response of a state x_0).
        dtA: ``[C, N]`` complex, Re <= 0 (Δ·A).
    Returns:
        ``[..., C, length]`` real (the real dtype of ``w``). Blockwise, O(C·N·length) time, O(C·N·sqrt(length))
        extra memory: l = j·L_b + i, and 2·Re(Σ_n (w_n Ā_n^(j·L_b)) Ā_n^i) is one real product
        ``[..., C, J, 2N] @ [C, 2N, L_b]`` (Re(xy) = x_r·y_r − x_i·y_i, the 2 folded into the left factor).
    """
    lb = _block(length)
    j = -(-length // lb)
    ar = torch.arange(max(lb, j), device=dtA.device, dtype=dtA.real.dtype)
    with no_autocast(dtA.device):
        pr, pi = _powers(dtA, ar[:lb])  # [C, N, L_b] = Ā^i
        qr, qi = _powers(dtA, ar[:j] * lb)  # [C, N, J] = Ā^(j·L_b)
        wr, wi = w.real[..., None], w.imag[..., None]  # [..., C, N, 1]
        left = torch.cat([wr * qr - wi * qi, -(wr * qi + wi * qr)], dim=-2).mul(2.0)  # [..., C, 2N, J]
        k = torch.matmul(left.transpose(-1, -2), torch.cat([pr, pi], dim=-2))  # [..., C, J, L_b]
    return k.flatten(-2)[..., :length]


def vandermonde_transpose(u: Tensor, dtA: Tensor) -> Tensor:
    """s[..., c, n] = Σ_r exp(dtA[c, n] · r) · u[..., c, r], r = 0 .. T−1 (the transpose of ``vandermonde``; with u
    reversed in time it is the state Σ_s Ā^(T−1−s) u_s a sequence leaves).

    Args:
        u: ``[..., C, T]`` real; dtA: ``[C, N]`` complex, Re <= 0.
    Returns:
        ``[..., C, N]`` complex (of ``dtA``'s dtype). Blockwise like ``vandermonde`` (real products).
    """
    t = u.shape[-1]
    lb = _block(t)
    j = -(-t // lb)
    ar = torch.arange(max(lb, j), device=dtA.device, dtype=dtA.real.dtype)
    with no_autocast(dtA.device):
        pr, pi = _powers(dtA, ar[:lb])  # [C, N, L_b]
        qr, qi = _powers(dtA, ar[:j] * lb)  # [C, N, J]
        up = torch.nn.functional.pad(u.to(dtA.real.dtype), (0, j * lb - t)).unflatten(-1, (j, lb))  # [..., C, J, L_b]
        s = torch.matmul(up, torch.cat([pr, pi], dim=-2).transpose(-1, -2))  # [..., C, J, 2N]
        n = dtA.shape[-1]
        sr, si = s[..., :n].transpose(-1, -2), s[..., n:].transpose(-1, -2)  # [..., C, N, J]
        return torch.complex((sr * qr - si * qi).sum(-1), (sr * qi + si * qr).sum(-1))


def legendre_lti(order: int, theta: float, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The continuous-time Legendre delay system (Voelker, Kajić, Eliasmith 2019, Eq. 1-2):

        A_ij = (2i+1)/θ · (−1 if i < j else (−1)^(i−j+1)),   B_i = (2i+1)·(−1)^i / θ,   i, j = 0 .. order−1.

    Returns ``(A [order, order], B [order])``."""
    i = torch.arange(order, device=device, dtype=torch.float64)
    r = (2 * i + 1)[:, None] / theta
    ii, jj = i[:, None], i[None, :]
    sign = torch.where(ii < jj, -torch.ones_like(ii * jj), (-1.0) ** (ii - jj + 1))
    a = r * sign
    b = (2 * i + 1) * (-1.0) ** i / theta
    return a.to(dtype), b.to(dtype)


def zoh(a: Tensor, b: Tensor, dt: float = 1.0) -> tuple[Tensor, Tensor]:
    """Zero-order-hold discretisation: Ā = exp(A·dt), B̄ = ∫_0^dt exp(A·τ) dτ · B, both read off the matrix
    exponential of the block matrix [[A, B], [0, 0]]·dt (Van Loan 1978; what scipy's ``cont2discrete(method='zoh')``
    computes). ``a [d, d]``, ``b [d]`` -> ``(Ā [d, d], B̄ [d])``."""
    d = a.shape[0]
    m = torch.zeros(d + 1, d + 1, dtype=a.dtype, device=a.device)
    m[:d, :d] = a * dt
    m[:d, d] = b * dt
    e = torch.linalg.matrix_exp(m)
    return e[:d, :d], e[:d, d]


def lti_impulse(ab: Tensor, bb: Tensor, length: int) -> Tensor:
    """H[:, t] = Ā^t B̄ for t = 0 .. length−1, ``[d, length]``, by doubling: H[:, k:2k] = Ā^k H[:, :k]
    (O(d²·length) time, log2(length) matrix products)."""
    h = bb[:, None]
    p = ab
    while h.shape[1] < length:
        h = torch.cat([h, p @ h], dim=1)
        p = p @ p
    return h[:, :length]


def lti_powers(ab: Tensor, count: int) -> Tensor:
    """``[count, d, d]``: Ā^1 .. Ā^count (by doubling)."""
    pw = ab[None]
    p = ab
    while pw.shape[0] < count:
        pw = torch.cat([pw, p @ pw], dim=0)  # Ā^(k+1..2k) = Ā^k Ā^(1..k)
        p = p @ p
    return pw[:count]


def lti_free_response(m0: Tensor, ab: Tensor, length: int) -> Tensor:
    """The memory left by an initial state with no input: out[..., :, t] = Ā^(t+1) m0, t = 0 .. length−1.

    ``m0 [..., d]``, ``ab [d, d]`` -> ``[..., d, length]``. Blockwise: a table Ā^1 .. Ā^(L_b) and J sequential
    block starts s_(j+1) = Ā^(L_b) s_j; O(length·d²) per row of m0."""
    lb = min(_block(length), length)
    j = -(-length // lb)
    pw = lti_powers(ab.to(m0.dtype), lb)  # [L_b, d, d]
    starts = [m0]
    for _ in range(j - 1):
        starts.append(starts[-1] @ pw[-1].mT)
    s = torch.stack(starts, dim=-2)  # [..., J, d]
    out = torch.einsum("ide,...je->...dji", pw, s)  # [..., d, J, L_b]
    return out.flatten(-2)[..., :length]


def hyena_positions(length: int, emb_dim: int, *, dtype: torch.dtype, device: torch.device
                    ) -> tuple[Tensor, Tensor]:
    """Hyena's positional embedding of the filter positions (Poli et al. 2023, Sec. 3.3, "implicit filters"; the
    reference's ``PositionalEmbedding``), generated for the actual ``length`` T:

        t_l = l / (T−1) (linspace(0, 1, T)),   ω_l = 2π·l / T,   z_l = [t_l, cos(f_b·ω_l), −sin(f_b·ω_l)]_b

    with ``bands = (emb_dim − 1) // 2`` frequencies f = linspace(1e-4, bands − 1, bands).

    Returns ``(z [T, emb_dim], t [T, 1])``. Raises ``ValueError`` for an even ``emb_dim`` < 3."""
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"emb_dim must be odd and >= 3, got {emb_dim!r}")
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, length, dtype=dtype, device=device)[:, None]  # [T, 1]
    w = 2 * math.pi * torch.arange(length, dtype=dtype, device=device)[:, None] / length  # [T, 1]
    f = torch.linspace(1e-4, bands - 1, bands, dtype=dtype, device=device)[None]  # [1, bands]
    return torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1), t


def exp_modulation(t: Tensor, h: Tensor, deltas: Tensor, shift: float = 0.0) -> Tensor:
    """Hyena's window (Poli et al. 2023, Sec. 3.3, Eq. 7): h(t) · (exp(−t·|δ_c|) + shift). ``t [T, 1]``,
    ``h [T, C]``, ``deltas [C]`` -> ``[T, C]``."""
    return h * (torch.exp(-t * deltas.abs()) + shift)


def hyena_deltas(channels: int, fast_decay_pct: float, slow_decay_pct: float, target: float) -> Tensor:
    """δ_c = linspace(log(target)/slow_decay_pct, log(target)/fast_decay_pct, C): channel c decays to ``target``
    after a fraction between ``fast_decay_pct`` and ``slow_decay_pct`` of the sequence."""
    return torch.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, channels)
