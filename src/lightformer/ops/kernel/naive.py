"""Oracles of kernel (linear) attention, written for reading, O(T²) or a Python loop over tokens.

Generalised attention with a kernel sim(q, k) = φ(q)ᵀφ(k) (Katharopoulos et al. 2020, "Transformers are RNNs",
Eq. 2-4):

    V'_i = Σ_j φ(Q_i)ᵀφ(K_j) V_j / (Σ_j φ(Q_i)ᵀφ(K_j) + eps)                      (Eq. 4, j <= i when causal, Eq. 8)

``kernel_attention`` materialises the ``[T, T]`` matrix A = φ(Q)φ(K)ᵀ (the explicit quadratic form, also
Choromanski et al. 2021 Eq. 1-2 with Â = φ(Q)φ(K)ᵀ); ``recurrent_kernel_attention`` runs the causal recurrence
of Sec. 3.4 (Eq. 16-20):  S_i = S_{i−1} + φ(K_i)V_iᵀ,  z_i = z_{i−1} + φ(K_i),  V'_i = φ(Q_i)ᵀS_i / (φ(Q_i)ᵀz_i + eps).

Conventions shared by the ops of this family:
    phi_q: ``[B, H, T, m]``, phi_k: ``[B, H, T, m]`` (non-negative features), v: ``[B, H, T, d]``; output
    ``[B, H, T, d]``. key_padding_mask ``[B, T]`` bool (True = real key): a padded key's features are zeroed, so it
    contributes to neither sum. eps > 0 is added to the denominator; it keeps a row whose features are all zero
    (possible with ReLU features, or when every key is masked) finite, with output 0 there.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_keys(phi_k: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """Zero the features of padded keys: ``[B, H, T, m]`` x ``[B, T]`` -> ``[B, H, T, m]``."""
    if key_padding_mask is None:
        return phi_k
    return phi_k * key_padding_mask[:, None, :, None].to(phi_k.dtype)


def kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, causal: bool, eps: float,
                     key_padding_mask: Tensor | None = None) -> Tensor:
    """The explicit quadratic form: A = φ(Q)φ(K)ᵀ (causally masked), out = A V / (A 1 + eps). O(T²·(m + d))."""
    phi_k = mask_keys(phi_k, key_padding_mask)
    a = torch.einsum("bhim,bhjm->bhij", phi_q, phi_k)  # [B, H, T, T]
    if causal:
        t = a.shape[-1]
        a = a * torch.ones(t, t, dtype=torch.bool, device=a.device).tril()
    num = torch.einsum("bhij,bhjd->bhid", a, v)  # [B, H, T, d]
    den = a.sum(dim=-1, keepdim=True) + eps  # [B, H, T, 1]
    return num / den


def recurrent_kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, eps: float,
                               key_padding_mask: Tensor | None = None,
                               initial_state: tuple[Tensor, Tensor] | None = None
                               ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Causal kernel attention by the RNN recurrence (Katharopoulos et al. 2020, Sec. 3.4, Eq. 16-20), one token
    at a time, from ``initial_state = (S_0 [B, H, m, d], z_0 [B, H, m])`` (None = zeros). Returns (out
    ``[B, H, T, d]``, final state ``(S_T, z_T)``). O(T·m·d) time, but a Python loop over T: an oracle, not a fast
    path."""
    phi_k = mask_keys(phi_k, key_padding_mask)
    b, h, t, m = phi_q.shape
    if initial_state is None:
        s = phi_q.new_zeros(b, h, m, v.shape[-1])  # S_0 = 0, [B, H, m, d]
        z = phi_q.new_zeros(b, h, m)  # z_0 = 0, [B, H, m]
    else:
        s, z = initial_state
    outs = []
    for i in range(t):
        s = s + phi_k[:, :, i, :, None] * v[:, :, i, None, :]  # S_i = S_{i-1} + φ(k_i) v_iᵀ
        z = z + phi_k[:, :, i]  # z_i = z_{i-1} + φ(k_i)
        num = torch.einsum("bhm,bhmd->bhd", phi_q[:, :, i], s)
        den = (phi_q[:, :, i] * z).sum(-1, keepdim=True) + eps
        outs.append(num / den)
    return torch.stack(outs, dim=2), (s, z)


def noncausal_kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, eps: float,
                               key_padding_mask: Tensor | None = None) -> Tensor:
    """Non-causal kernel attention by the associativity of Eq. 5-6: out = φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1) + eps),
    written as the two plain sums of Eq. 5 (no chunking)."""
    phi_k = mask_keys(phi_k, key_padding_mask)
    s = torch.einsum("bhjm,bhjd->bhmd", phi_k, v)  # Σ_j φ(K_j) V_jᵀ
    z = phi_k.sum(dim=2)  # Σ_j φ(K_j)
    num = torch.einsum("bhim,bhmd->bhid", phi_q, s)
    den = torch.einsum("bhim,bhm->bhi", phi_q, z)[..., None] + eps
    return num / den
