"""Oracle of kernelized attention with relative positional encoding (Luo et al. 2021, "Stable, Fast and Accurate:
Kernelized Attention with Relative Positional Encoding", Sec. 3, Eq. 6-9), written for reading: the ``[T, T]``
Toeplitz matrix of the position weights is materialised.

    z_i = Σ_j φ(q_i)ᵀφ(k_j) · b_{i−j} · v_j  /  Σ_j φ(q_i)ᵀφ(k_j) · b_{i−j}              (b_{i−j} = 0 for j > i
                                                                                         when causal)

(Eq. 6 with the kernel of Eq. 7 replaced by its random-feature estimate φ(q)ᵀφ(k) of Eq. 8-9; b_{i−j} > 0 is the
exponentiated relative-position bias, so with exact features this is softmax attention with an RPE bias log b.)

Conventions shared by the ops of this family:
    phi_q, phi_k: ``[B, H, T, m]`` non-negative features; v: ``[B, H, T, d]``; output ``[B, H, T, d]``.
    b_rel: ``[H, 2T − 1]`` positive weights, column i − j + T − 1 holds offset i − j.
    key_padding_mask ``[B, T]`` bool (True = real key): a padded key's features are zeroed.
    A row whose denominator is 0 (no key, or complete underflow) outputs 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def toeplitz(b_rel: Tensor, t: int) -> Tensor:
    """``[H, 2T − 1]`` -> ``[H, T, T]`` with entry (i, j) = b_rel[:, i − j + T − 1]."""
    i = torch.arange(t, device=b_rel.device)
    idx = i[:, None] - i[None, :] + t - 1  # [T, T]
    return b_rel[:, idx]


def kernel_rpe_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, b_rel: Tensor, *, causal: bool = False,
                         key_padding_mask: Tensor | None = None) -> Tensor:
    """Dense form of Eq. 6 with a random-feature kernel, see the module docstring. O(T²·(m + d))."""
    t = phi_q.shape[2]
    if key_padding_mask is not None:
        phi_k = phi_k * key_padding_mask[:, None, :, None].to(phi_k.dtype)
    a = torch.einsum("bhim,bhjm->bhij", phi_q, phi_k) * toeplitz(b_rel, t)[None]  # [B, H, T, T]
    if causal:
        a = a * torch.ones(t, t, dtype=torch.bool, device=a.device).tril()
    num = a @ v  # [B, H, T, d]
    den = a.sum(dim=-1, keepdim=True)  # [B, H, T, 1]
    ok = den > 0
    return torch.where(ok, num, 0.0) / torch.where(ok, den, 1.0)
