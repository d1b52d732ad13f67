"""Oracle of reversed attention (Ding et al. 2023, "Visual Dependency Transformers: Dependency Tree Emerges from
Reversed Attention", Sec. 3.1), written for reading: the whole ``[Tq, Tk]`` score matrix is materialised.

Ordinary attention normalises each *row* (a query distributes a unit of attention over the keys it reads).
Reversed attention normalises each *column*: every key j (the sender, a child node) distributes a unit of
attention over the queries i (the receivers, its candidate parents), and each query sums what it is sent:

    S_ij = q_i · k_j / sqrt(d)
    A_ij = exp(S_ij) / Σ_{i'} exp(S_i'j)          (softmax over the QUERY axis i: Σ_i A_ij = 1 for every key j)
    out_i = Σ_j A_ij v_j                           (out = A V; equivalently the transposed attention Aᵀ of the
                                                    key-as-query scores K Qᵀ, softmax over its last axis)

Conventions: q, k, v ``[B, H, T, d]`` (same T for queries and keys: self-attention), output ``[B, H, T, d]`` in the
dtype of q. key_padding_mask ``[B, T]`` bool (True = real token): padded queries receive nothing (they are left
out of every column's normalisation and output 0) and padded keys send nothing (their column is 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reversed_attention(q: Tensor, k: Tensor, v: Tensor, *, key_padding_mask: Tensor | None = None,
                       scale: float | None = None) -> Tensor:
    """Dense reversed attention, see the module docstring. Returns ``[B, H, T, d]``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale  # [B, H, Tq, Tk]
    if key_padding_mask is None:
        weights = torch.softmax(scores, dim=-2)  # normalised over the queries (receivers)
    else:
        pair = key_padding_mask[:, None, :, None] & key_padding_mask[:, None, None, :]  # [B, 1, Tq, Tk]
        scores = scores.masked_fill(~pair, float("-inf"))
        empty = ~pair.any(dim=-2, keepdim=True)  # a padded key: a column with no receiver
        weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-2).masked_fill(empty | ~pair, 0.0)
    return torch.einsum("bhij,bhjd->bhid", weights, v).to(q.dtype)
