"""AFT-full fast path (Zhai et al. 2021, "An Attention Free Transformer", Eq. 2) as exp(w) matrix products.

    Y_t = σ(Q_t) ⊙ [exp(w) (exp(K) ⊙ V)]_t / [exp(w) exp(K)]_t

The paper's own formulation: with exp(w) a ``[T, T]`` matrix and exp(K) ⊙ V a ``[T, C]`` one, numerator and
denominator are one matmul ``[T, T] @ [T, 2C]``: O(T²·C) time, O(T² + T·C) memory (the paper's complexity for
AFT-full). Stabilised as the paper suggests: each row of w minus its maximum over the allowed keys, K minus its
per-channel maximum over the real keys; both constants cancel in the ratio, so all exponents are <= 0. Causal:
query blocks of L rows, block c using the running maximum of K up to its last row (never a future-dependent
stabiliser that could underflow the past), against the lower-triangular exp(w).
Same semantics as ``naive.aft_full``. Dtypes: exponentials and the ratio in float32 (float64 for float64 inputs);
with bf16/fp16 inputs the matmuls run in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .simple import LOW_PRECISION, finite_or_zero, mask_keys, safe_ratio, stat_dtype


def aft_full(q: Tensor, k: Tensor, v: Tensor, w: Tensor, *, causal: bool = False,
             key_padding_mask: Tensor | None = None, block_size: int = 256) -> Tensor:
    """AFT-full: q, k, v ``[B, T, C]``, w ``[>= T, >= T]`` -> ``[B, T, C]``. ``block_size``: causal query block."""
    b, t, c = q.shape
    sd = stat_dtype(q)
    mm = q.dtype if q.dtype in LOW_PRECISION else sd
    kf = mask_keys(k.to(sd), key_padding_mask)
    vf = v.to(sd)
    wt = w[:t, :t].to(sd)
    if causal:
        wt = wt.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=w.device).tril(), float("-inf"))
    ew = torch.exp(wt - finite_or_zero(wt.amax(dim=1, keepdim=True))).to(mm)  # [T, T], <= 1
    if not causal:
        e = torch.exp(kf - finite_or_zero(kf.amax(dim=1, keepdim=True)))  # [B, T, C]
        nd = ew @ torch.cat([e * vf, e], dim=-1).to(mm)  # [B, T, 2C]
        num, den = nd.to(sd).split(c, dim=-1)
    else:
        run_max = finite_or_zero(kf.cummax(dim=1).values)  # [B, T, C]
        parts = []
        for r0 in range(0, t, block_size):
            r1 = min(t, r0 + block_size)
            e = torch.exp(kf[:, :r1] - run_max[:, r1 - 1:r1])  # [B, r1, C], keys up to the block's end
            parts.append(ew[r0:r1, :r1] @ torch.cat([e * vf[:, :r1], e], dim=-1).to(mm))  # [B, r1-r0, 2C]
        num, den = torch.cat(parts, dim=1).to(sd).split(c, dim=-1)
    return (torch.sigmoid(q.to(sd)) * safe_ratio(num, den)).to(q.dtype)
