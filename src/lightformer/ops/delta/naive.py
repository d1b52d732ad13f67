"""Oracle of the (gated) delta rule: the recurrence itself, one token at a time, written for reading.

DeltaNet (Schlag, Irie, Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers", Eq. 23-26;
Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
arXiv 2406.06484, Eq. 1-2) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025, "Gated Delta Networks: Improving
Mamba2 with Delta Rule", arXiv 2412.06464, Eq. 10):

    S_t = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,      o_t = S_t q_t          (S_t: [d_v, d_k])

with α_t ≡ 1 for DeltaNet. The ops of this family store the transposed state, ``S: [d_k, d_v]`` (the layout of the
reference code), where the same step reads: decay, then the delta (the error of the decayed memory's prediction
for k_t), then the write:

    S̃ = α_t S_{t−1},   v'_t = β_t (v_t − S̃ᵀ k_t),   S_t = S̃ + k_t v'_tᵀ,   o_t = S_tᵀ (scale · q_t)

Conventions shared by the ops of this family:
    q, k: ``[B, H, T, d_k]`` (the mixers L2-normalise them), v: ``[B, H, T, d_v]``, beta: ``[B, H, T]`` in [0, 1],
    g: ``[B, H, T]`` the log-decay log α_t <= 0 (None = DeltaNet, α ≡ 1), scale: multiplies q (default
    d_k^−1/2), initial_state: ``[B, H, d_k, d_v]`` S_0 (None = zeros). A token with β = 0 and g = 0 leaves the
    state unchanged (how the mixers drop padded tokens and how the chunked form pads T to a multiple of its chunk).
    Returns ``(o [B, H, T, d_v] in the dtype of v, S_T or None)``; the state is float32 (float64 for float64
    inputs) whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the state and of the recurrence's arithmetic: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def delta_rule_recurrence(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, *,
                          scale: float | None = None, initial_state: Tensor | None = None,
                          output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """The (gated) delta rule by its recurrence, a Python loop over T (module docstring for shapes and dtypes).
    O(T·d_k·d_v) time; an oracle, not a fast path."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    acc, out_dtype = state_dtype(q.dtype), v.dtype
    scale = dk ** -0.5 if scale is None else scale
    q, k, v, beta = q.to(acc) * scale, k.to(acc), v.to(acc), beta.to(acc)
    s = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(acc)
    outs = []
    for i in range(t):
        if g is not None:
            s = s * g[:, :, i, None, None].to(acc).exp()  # S̃ = α_t S_{t−1}
        k_i = k[:, :, i]  # [B, H, d_k]
        pred = torch.einsum("bhkv,bhk->bhv", s, k_i)  # S̃ᵀ k_t: what the memory recalls for k_t
        v_new = beta[:, :, i, None] * (v[:, :, i] - pred)  # v'_t
        s = s + k_i[..., :, None] * v_new[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", s, q[:, :, i]))
    o = torch.stack(outs, dim=2).to(out_dtype) if t else v.new_zeros(b, h, 0, dv, dtype=out_dtype)
    return o, (s if output_final_state else None)
