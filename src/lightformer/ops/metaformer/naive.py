"""The MetaFormer-family mixers written for reading: the oracle of ``fft``, ``pool`` and ``context``.

Every function takes ``x: [B, T, D]`` and is float64-safe; they are O(T²·D) (explicit DFT matrices) or loop over the
positions in Python. Same signatures and semantics as the fast paths:

* ``fourier_mix``   FNet (Lee-Thorp et al. 2022, Eq. 3): y = Re(F_T · x · F_D), F_N the N-point DFT matrix.
* ``global_filter`` GFNet (Rao et al. 2021, Eq. 3-5), 1-D: y = F_N⁻¹(W ⊙ F_N x) on x zero-padded to N = max_len.
* ``avg_pool``      PoolFormer (Yu et al. 2022, Eq. 4 / Alg. 1): mean over the real tokens of the window, minus x.
* ``context_pool``  GCNet (Cao et al. 2019, Eq. 2-4) context modelling: Σ_j softmax_j(W_k x_j) x_j.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: torch.fft's normalisation names and the scale each puts on the forward transform of N points.
FFT_NORMS = ("backward", "ortho", "forward")


def _scale(norm: str, n: int) -> float:
    if norm not in FFT_NORMS:
        raise ValueError(f"norm must be one of {FFT_NORMS}, got {norm!r}")
    return {"backward": 1.0, "ortho": 1.0 / math.sqrt(n), "forward": 1.0 / n}[norm]


def dft_angles(rows: int, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """2π·(k·j mod n)/n for k < rows, j < n, ``[rows, n]`` (the modulo keeps the angles small, hence exact)."""
    k = torch.arange(rows, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (2 * math.pi / n) * ((k * j) % n).to(dtype)


def fourier_mix(x: Tensor, *, norm: str = "ortho") -> Tensor:
    """FNet's Fourier sublayer: the real part of the 2-D DFT over (sequence, hidden), ``[B, T, D] -> [B, T, D]``.

    With F_N = C_N − i·S_N (C = cos, S = sin of the DFT angles), Re(F_T x F_D) = C_T x C_D − S_T x S_D, both DFT
    matrices being symmetric. ``norm`` scales as torch.fft does over the T·D points: ``"backward"`` 1 (the paper),
    ``"ortho"`` 1/sqrt(T·D), ``"forward"`` 1/(T·D). Output dtype = input dtype.
    """
    _, t, d = x.shape
    ct, st = (f(dft_angles(t, t, x.device, x.dtype)) for f in (torch.cos, torch.sin))
    cd, sd = (f(dft_angles(d, d, x.device, x.dtype)) for f in (torch.cos, torch.sin))
    return (ct @ x @ cd - st @ x @ sd) * _scale(norm, t * d)


def global_filter(x: Tensor, weight: Tensor, *, n: int) -> Tensor:
    """GFNet's global filter along the sequence, ``x [B, T, D] -> [B, T, D]`` for T <= n.

    x is zero-padded to n points; X_k = n^{-1/2} Σ_j x_j e^{−2πi kj/n} for k = 0 .. n//2 (``rfft``, norm='ortho');
    Z_k = W_k ⊙ X_k with the complex filter W = ``weight[..., 0] + i·weight[..., 1]`` (``[n//2 + 1, D, 2]``); the
    real inverse y_j = n^{-1/2} Σ_k c_k Re(Z_k e^{2πi kj/n}), c_k = 1 for k = 0 (and k = n/2 when n is even),
    2 otherwise (the Hermitian half that ``irfft`` implies); the first T rows are returned. So y is the top-left
    T×T block of the n-point circular convolution with the kernel irfft(W): exactly the length-n output for x
    followed by n − T zero tokens.
    """
    b, t, d = x.shape
    half = n // 2 + 1
    if t > n:
        raise ValueError(f"x has T={t} tokens, above max_len={n}")
    if weight.shape != (half, d, 2):
        raise ValueError(f"weight must be [max_len//2 + 1, D, 2]={(half, d, 2)}, got {tuple(weight.shape)}")
    ang = dft_angles(half, n, x.device, x.dtype)[:, :t]  # [K, T]: zero-padded rows of x contribute nothing
    xr = torch.cos(ang) @ x / math.sqrt(n)  # [B, K, D]
    xi = -torch.sin(ang) @ x / math.sqrt(n)
    wr, wi = weight[..., 0].to(x.dtype), weight[..., 1].to(x.dtype)
    zr, zi = xr * wr - xi * wi, xr * wi + xi * wr
    c = torch.full((half, 1), 2.0, dtype=x.dtype, device=x.device)
    c[0] = 1.0
    if n % 2 == 0:
        c[-1] = 1.0
    ang_t = ang.T  # [T, K]: only the first T output rows are kept
    return (torch.cos(ang_t) @ (c * zr) - torch.sin(ang_t) @ (c * zi)) / math.sqrt(n)


def avg_pool(x: Tensor, pool_size: int, *, causal: bool, key_padding_mask: Tensor | None = None,
             initial_state: Tensor | None = None, start: int = 0,
             output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """PoolFormer's mixer: y_t = mean{x_s : s in window(t), s a real token} − x_t, ``[B, T, D]``.

    window(t) = [t − p, t + p] with p = pool_size // 2 (non-causal, pool_size odd: ``AvgPool1d(pool_size, 1, p,
    count_include_pad=False)``), or [t − pool_size + 1, t] (causal). Positions outside [0, T), padded positions
    (``key_padding_mask`` False) and window slots before the first token are not counted. A window with no real
    token (only possible at a padded position) gives mean 0.

    Causal only: ``initial_state [B, pool_size − 1, D]`` is the window before x (its last ``min(start,
    pool_size − 1)`` rows are tokens, ``start`` = tokens consumed before x); with ``output_final_state`` the last
    pool_size − 1 rows of (window, x) are returned as the new window (``None`` otherwise).
    """
    b, t, d = x.shape
    k = pool_size
    real = torch.ones(b, t, dtype=torch.bool, device=x.device) if key_padding_mask is None else key_padding_mask
    if causal:
        window = x.new_zeros(b, k - 1, d) if initial_state is None else initial_state.to(x.dtype)
        seen = torch.arange(k - 1, device=x.device) >= k - 1 - start  # which window rows are tokens
        full = torch.cat([window, x], dim=1)
        full_real = torch.cat([seen.expand(b, k - 1), real], dim=1)
        offset, lo, hi = k - 1, -(k - 1), 0
    else:
        full, full_real, offset, lo, hi = x, real, 0, -(k // 2), k // 2
    ys = []
    for i in range(t):
        total = x.new_zeros(b, d)
        count = x.new_zeros(b, 1)
        for j in range(lo, hi + 1):  # the window, slot by slot
            s = offset + i + j
            if 0 <= s < full.shape[1]:
                r = full_real[:, s, None]
                total = total + torch.where(r, full[:, s], torch.zeros_like(full[:, s]))
                count = count + r.to(x.dtype)
        ys.append(total / count.clamp(min=1.0) - x[:, i])
    y = torch.stack(ys, dim=1)
    final = full[:, full.shape[1] - (k - 1):] if (causal and output_final_state) else None
    return y, final


def context_pool(x: Tensor, weight: Tensor, *, causal: bool, key_padding_mask: Tensor | None = None,
                 initial_state: tuple[Tensor, Tensor, Tensor] | None = None,
                 output_final_state: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """GCNet's context modelling (attention pooling), ``x [B, T, D]``, ``weight [D]`` (the 1×1 conv W_k).

    a_j = W_k·x_j; non-causal: c = Σ_j softmax_j(a) x_j over the real tokens, returned as ``[B, 1, D]``; causal (our
    extension): c_t = Σ_{j<=t} softmax_{j<=t}(a) x_j, ``[B, T, D]``, continuing from ``initial_state = (m [B],
    l [B], u [B, D])``: the tokens before x as a running max m of their scores, l = Σ e^{a_j − m} and
    u = Σ e^{a_j − m} x_j (m = −∞, l = 0, u = 0 before any token). Computed for every position with its own
    explicit softmax (one row of a masked [T, 1 + T] score matrix, O(T²·D)). With ``output_final_state`` (causal)
    the state after x is returned, else ``None``. A position with no real token so far gives c = 0.
    """
    b, t, d = x.shape
    a = x @ weight.to(x.dtype)  # [B, T]
    if key_padding_mask is not None:
        a = a.masked_fill(~key_padding_mask, float("-inf"))
    if not causal:
        p = torch.softmax(a, dim=1)  # [B, T]
        return (p[:, :, None] * x).sum(dim=1, keepdim=True), None
    if initial_state is None:
        m0 = x.new_full((b,), float("-inf"))
        l0, u0 = x.new_zeros(b), x.new_zeros(b, d)
    else:
        m0, l0, u0 = (s.to(x.dtype) for s in initial_state)
    # row t of the softmax: the earlier tokens as one pseudo-token (score m0, weight l0, value u0), then a_j, j <= t
    scores = torch.cat([m0[:, None], a], dim=1)[:, None, :].expand(b, t, t + 1)  # [B, T(query), 1 + T(key)]
    later = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
    scores = scores.masked_fill(torch.cat([torch.zeros(t, 1, dtype=torch.bool, device=x.device), later], 1),
                                float("-inf"))
    top = scores.max(dim=-1, keepdim=True).values
    e = torch.exp(scores - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))  # all <= 1
    num = e[..., :1] * u0[:, None, :] + e[..., 1:] @ x
    den = e[..., 0] * l0[:, None] + e[..., 1:].sum(dim=-1)
    c = num / torch.where(den > 0, den, torch.ones_like(den))[..., None]
    if not output_final_state:
        return c, None
    scores = torch.cat([m0[:, None], a], dim=1)
    m = scores.max(dim=1).values
    ref = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(scores - ref[:, None])
    return c, (m, e[:, 0] * l0 + e[:, 1:].sum(dim=1), e[:, :1] * u0 + (e[:, 1:, None] * x).sum(dim=1))
