"""Masked segment sums: the cumulative log-decays of the SSD family, computed without subtracting cumulative sums.

    segsum(g)[..., i, j] = Σ_{j < r <= i} g_r   for j <= i,      −inf for j > i

(Dao & Gu 2024, "Transformers are SSMs", Sec. 6 / Listing 1: L = exp(segsum(A)) is the 1-semiseparable mask of the
scalar SSM). It is built as a cumulative sum *inside* a strictly-lower-triangular mask, so an entry is a sum of the
g_r it spans and nothing else: exp(segsum) is a product of decays <= 1 with no cancellation, unlike
exp(G_i − G_j) = exp(G_i)·exp(−G_j) over global prefix sums, which overflows or loses all precision once |G| is
large (tenstorrent/tt-metal #56550; flash-linear-attention #77).
"""

from __future__ import annotations

import torch
from torch import Tensor


def segsum(g: Tensor) -> Tensor:
    """``g [..., n] -> [..., n, n]`` with entry (i, j) = Σ_{j<r<=i} g_r below and on the diagonal (0 on it), −inf
    above. Same dtype as ``g``; O(n²) memory per row of ``...``."""
    n = g.shape[-1]
    x = g[..., :, None].expand(*g.shape, n)  # x[..., r, j] = g_r
    strict = torch.ones(n, n, dtype=torch.bool, device=g.device).tril(-1)  # r > j
    out = torch.cumsum(x.masked_fill(~strict, 0.0), dim=-2)  # Σ_{j<r<=i} g_r
    return out.masked_fill(~strict.logical_or(torch.eye(n, dtype=torch.bool, device=g.device)), float("-inf"))
