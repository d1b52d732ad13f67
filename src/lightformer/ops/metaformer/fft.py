"""FFT fast paths of FNet and GFNet (same signatures and semantics as ``naive.fourier_mix`` /
``naive.global_filter``), O(T·D·(log T + log D)) and O(T·D·log T).

torch.fft has no bfloat16/float16 CPU kernels, so half-precision inputs are transformed in float32 and the output
is cast back to the input's dtype; float64 stays float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .naive import FFT_NORMS

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in LOW_PRECISION else x.dtype


def fourier_mix(x: Tensor, *, norm: str = "ortho") -> Tensor:
    """FNet: Re(FFT_seq(FFT_hidden(x))), ``[B, T, D] -> [B, T, D]`` (Lee-Thorp et al. 2022, Eq. 3).

    For real x the 2-D spectrum Y is Hermitian: Y[k, l] = conj(Y[−k, −l]), so Re Y[k, D − l] = Re Y[−k mod T, l].
    ``rfft2`` gives the columns l = 0 .. D//2 (half the complex work and memory of ``fft2``); the other columns
    are those real parts with the sequence index reversed (k -> −k mod T).
    """
    if norm not in FFT_NORMS:
        raise ValueError(f"norm must be one of {FFT_NORMS}, got {norm!r}")
    d = x.shape[-1]
    z = torch.fft.rfft2(x.to(_compute_dtype(x)), dim=(1, 2), norm=norm).real  # [B, T, D//2 + 1]
    rest = d - z.shape[-1]  # columns D//2 + 1 .. D − 1, i.e. l' = D − l for l = (D − 1)//2 .. 1
    if rest:
        neg_k = torch.roll(torch.flip(z, dims=(1,)), shifts=1, dims=1)  # row k holds row −k mod T
        z = torch.cat([z, torch.flip(neg_k[..., 1:1 + rest], dims=(2,))], dim=-1)
    return z.to(x.dtype)


def global_filter(x: Tensor, weight: Tensor, *, n: int) -> Tensor:
    """GFNet's global filter, ``x [B, T, D]`` (T <= n), ``weight [n//2 + 1, D, 2]`` (real, imaginary) -> ``[B, T, D]``:
    irfft(rfft(x, n, norm='ortho') ⊙ W, n, norm='ortho')[:T] (Rao et al. 2021, Eq. 3-5, ``GlobalFilter``), x zero-
    padded to n points. Runs in float32 for half-precision x (and the weight's dtype otherwise); returns x's dtype.
    """
    b, t, d = x.shape
    if t > n:
        raise ValueError(f"x has T={t} tokens, above max_len={n}")
    if weight.shape != (n // 2 + 1, d, 2):
        raise ValueError(f"weight must be [max_len//2 + 1, D, 2]={(n // 2 + 1, d, 2)}, got {tuple(weight.shape)}")
    dtype = torch.promote_types(_compute_dtype(x), weight.dtype)
    spectrum = torch.fft.rfft(x.to(dtype), n=n, dim=1, norm="ortho")  # [B, n//2 + 1, D]
    filtered = spectrum * torch.view_as_complex(weight.to(dtype).contiguous())
    return torch.fft.irfft(filtered, n=n, dim=1, norm="ortho")[:, :t].to(x.dtype)
