"""Kernelized attention with RPE (Luo et al. 2021, Sec. 3, Eq. 6-9) in its dense form, the fast path for short
sequences: O(T²·(m + d)) time and O(T²) memory per head, against the FFT form's O(T·log T·m·d) (``fft.py``).

The FFT form runs m·(d + 1) convolutions of n >= 2T − 1 points per head, so its cost per token is
~m·(d + 1)·log T whatever the length (in float64 when causal, on complex buffers m·(d + 1) times the size of v),
while the dense form's is ~T·(m + d) in real float32 matmuls: below a few thousand tokens the dense form does far
less work (measured in ``docs/results/kernel_rpe_dense/``). Same semantics as ``naive.kernel_rpe_attention``,
computed leaner:

* the causal mask is folded into the Toeplitz weights (b_δ = 0 for δ < 0), so it costs nothing;
* numerator and denominator come from one matmul against [v, 1] (``[B, H, T, d + 1]``);
* float32 for float32/bf16 inputs (float64 for float64): the dense sums have no FFT rounding noise, so unlike the
  FFT form the causal case needs no float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import toeplitz


def kernel_rpe_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, b_rel: Tensor, *, causal: bool = False,
                         key_padding_mask: Tensor | None = None) -> Tensor:
    """Same signature and semantics as ``naive.kernel_rpe_attention``: phi_q, phi_k ``[B, H, T, m]`` non-negative,
    v ``[B, H, T, d]``, b_rel ``[H, 2T − 1]`` positive, key_padding_mask ``[B, T]`` bool (True = real key).
    Returns ``[B, H, T, d]`` in the dtype of ``v``; a row without weight outputs 0."""
    t, d = phi_q.shape[2], v.shape[-1]
    cd = torch.float64 if v.dtype == torch.float64 else torch.float32
    phi_q, phi_k = phi_q.to(cd), phi_k.to(cd)
    if key_padding_mask is not None:
        phi_k = phi_k * key_padding_mask[:, None, :, None].to(cd)
    b = b_rel.to(cd)
    if causal:  # offsets δ = i − j < 0 sit in the first T − 1 columns
        b = torch.cat([b.new_zeros(b.shape[0], t - 1), b[:, t - 1:]], dim=1)
    a = (phi_q @ phi_k.transpose(-1, -2)) * toeplitz(b, t)  # [B, H, T, T]
    acc = a @ F.pad(v.to(cd), (0, 1), value=1.0)  # [B, H, T, d + 1]: numerator, denominator
    num, den = acc[..., :d], acc[..., d:]
    ok = den > 0
    return (torch.where(ok, num, 0.0) / torch.where(ok, den, 1.0)).to(v.dtype)
