"""One step of the recurrent (RNN) form of causal kernel attention, for decoding (Katharopoulos et al. 2020,
"Transformers are RNNs", Sec. 3.4, Eq. 16-20):

    S_i = S_{i−1} + φ(k_i) v_iᵀ,   z_i = z_{i−1} + φ(k_i),   out_i = φ(q_i)ᵀ S_i / (φ(q_i)ᵀ z_i + eps)

O(m·d) per token whatever the position: the state is ``S: [B, H, m, d]`` and ``z: [B, H, m]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kernel_step(phi_q: Tensor, phi_k: Tensor, v: Tensor, s: Tensor, z: Tensor, *,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """phi_q, phi_k ``[B, H, m]``, v ``[B, H, d]``, state s ``[B, H, m, d]``, z ``[B, H, m]`` ->
    (out ``[B, H, d]``, new s, new z). Computes in the dtype of the state; the output has that dtype too."""
    phi_q, phi_k, v = phi_q.to(s.dtype), phi_k.to(s.dtype), v.to(s.dtype)
    s = s + phi_k[..., :, None] * v[..., None, :]
    z = z + phi_k
    num = torch.einsum("bhm,bhmd->bhd", phi_q, s)
    den = (phi_q * z).sum(-1, keepdim=True) + eps
    return num / den, s, z
