"""Kernelized attention with RPE through the FFT (Luo et al. 2021, "Stable, Fast and Accurate: Kernelized
Attention with Relative Positional Encoding", Sec. 3.2, Eq. 9): O(T·log T·m·d) time, O(T·m_c·d) working memory per
feature chunk.

The position weights make the key sums Toeplitz: with M_j = φ(k_j) [v_j, 1]ᵀ (``[m, d + 1]``: the appended 1 gives
the denominator in the same pass),

    C_i = Σ_j b_{i−j} M_j,        z_i = (φ(q_i)ᵀ C_i)[:d] / (φ(q_i)ᵀ C_i)[d]

and a Toeplitz product is a linear convolution: with M zero-padded to n >= 2T − 1 along the sequence (n the next
2^a·3^b·5^c size) and the weights laid out circularly (b_δ at index δ mod n, δ in [−(T−1), T−1]; 0 for δ < 0 when
causal), C = irfft(rfft(M)·rfft(b)) restricted to the first T positions (no wrap-around reaches them since
|δ| < T <= n − T + 1). The m features are processed in
chunks so that only ``[B, H, m_c, d + 1, T]`` lives at once in the forward pass (autograd keeps each chunk's
spectra for the backward pass, O(T·m·d) in total). Same semantics as ``naive.kernel_rpe_attention``.
Dtypes: float64 runs in float64; bidirectional float32/bf16 in float32 (the FFT has no bf16 kernel on CPU);
causal float32/bf16 in float64 (the first rows' small prefix sums drown in float32 FFT noise, see below).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..longconv.fft import fast_size


def circular_weights(b_rel: Tensor, t: int, causal: bool, n: int | None = None) -> Tensor:
    """``[H, 2T − 1]`` (offset δ at column δ + T − 1) -> ``[H, n]`` with b_δ at index δ mod n (n >= 2T − 1, default
    2T; zeros between the positive and the negative offsets).

    Raises:
        ValueError: ``n < 2T − 1`` (offsets would wrap onto each other)."""
    n = 2 * t if n is None else n
    if n < 2 * t - 1:
        raise ValueError(f"n must be >= 2T - 1 = {2 * t - 1} so that no offset wraps, got n={n}")
    pos = b_rel[:, t - 1:]  # δ = 0 .. T−1
    neg = b_rel[:, : t - 1]  # δ = −(T−1) .. −1  -> indices n−T+1 .. n−1
    if causal:
        neg = torch.zeros_like(neg)
    return torch.cat([pos, pos.new_zeros(pos.shape[0], n - 2 * t + 1), neg], dim=1)


def kernel_rpe_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, b_rel: Tensor, *, causal: bool = False,
                         key_padding_mask: Tensor | None = None, feature_chunk: int | None = None) -> Tensor:
    """Same signature as ``naive.kernel_rpe_attention`` (plus ``feature_chunk`` m_c, default: about 2^24 elements
    per chunk). Returns ``[B, H, T, d]`` in the dtype of ``v``."""
    b, h, t, m = phi_q.shape
    d = v.shape[-1]
    # causal rows near the start hold sums far smaller than the FFT's rounding noise (~eps·Σ|b·M| over the whole
    # sequence): float32 FFTs were 100x less accurate there than the naive float32 form, so causal runs in float64
    cd = torch.float64 if (v.dtype == torch.float64 or causal) else torch.float32
    phi_q, phi_k = phi_q.to(cd), phi_k.to(cd)
    if key_padding_mask is not None:
        phi_k = phi_k * key_padding_mask[:, None, :, None].to(cd)
    v1 = F.pad(v.to(cd), (0, 1), value=1.0)  # [B, H, T, d + 1]
    # a linear convolution needs n >= 2T − 1 points; 2T itself can have a large prime factor (T=31: 62 = 2·31),
    # which pocketfft transforms far more slowly than the next 2^a·3^b·5^c size
    n = fast_size(2 * t - 1)
    bf = torch.fft.rfft(circular_weights(b_rel.to(cd), t, causal, n), dim=-1)  # [H, n/2 + 1]
    bf = bf[None, :, None, None, :]  # [1, H, 1, 1, n/2 + 1]
    mc = feature_chunk or max(1, min(m, (1 << 24) // max(1, b * h * 2 * t * (d + 1))))
    # sequence-last layout: the FFTs run over contiguous rows (2x faster than over a strided middle axis)
    acc = torch.zeros(b, h, d + 1, t, dtype=cd, device=v.device)
    pk_t, pq_t, v1_t = phi_k.transpose(-1, -2), phi_q.transpose(-1, -2), v1.transpose(-1, -2)  # [B, H, *, T]
    for f0 in range(0, m, mc):
        f1 = min(m, f0 + mc)
        mj = pk_t[:, :, f0:f1, None, :] * v1_t[:, :, None, :, :]  # [B, H, m_c, d+1, T] = M_j
        spec = torch.fft.rfft(mj, n=n, dim=-1) * bf  # [B, H, m_c, d+1, n/2 + 1]
        conv = torch.fft.irfft(spec, n=n, dim=-1)[..., :t]  # [B, H, m_c, d+1, T] = C_i
        acc = acc + torch.einsum("bhmt,bhmet->bhet", pq_t[:, :, f0:f1], conv)
    acc = acc.transpose(-1, -2)  # [B, H, T, d + 1]
    num, den = acc[..., :d], acc[..., d:]
    ok = den > 0
    return (torch.where(ok, num, 0.0) / torch.where(ok, den, 1.0)).to(v.dtype)
