"""``kernel_rpe_fft``: kernelized attention with relative positional encoding computed through the FFT
(Luo et al. 2021, "Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding", Sec. 3,
Eq. 6-9).

    z_i = Σ_j φ(q_i)ᵀφ(k_j) b_{i−j} v_j / Σ_j φ(q_i)ᵀφ(k_j) b_{i−j}        (b_{i−j} = 0 for j > i when causal)

* φ: FAVOR+ positive random features (Choromanski et al. 2021, Lemma 1; ``lightformer.ops.kernel.features``),
  φ(x) = exp(Wx − |x|²/2 − c)/sqrt(m) on x = q·d^(−1/4) (resp. k), so φ(q)ᵀφ(k) estimates exp(qᵀk/sqrt(d)).
  W ``[num_features, head_dim]`` (orthogonal random features, shared by the heads) is a fixed buffer drawn at
  construction from a generator seeded by the global torch RNG, so forward and oracle agree and a seeded build is
  deterministic. No redraw.
* b: per head, 2·max_len − 1 relative-position weights b_δ = exp(β_δ) with β = ``rpe_logits`` learned
  (``[H, 2·max_len − 1]``, initialised to 0, i.e. plain Performer). The exponential keeps b > 0, so numerator and
  denominator stay sums of positive terms (the paper's stability argument, Sec. 3.3) and log b acts as an additive
  RPE bias on the softmax logits.

Q, K, V and the output projection are the shared ``AttentionMixer`` ones. x: ``[B, T, D]`` -> ``[B, T, D]``,
T <= ``max_len``. Complexity O(T·log T·m·d) time (``ops/rpe/fft.py``: the Toeplitz sums as zero-padded FFTs
over the sequence), O(T·m·d) memory. Up to ``DENSE_MAX_LEN`` tokens the same Eq. 6 runs in its dense form
instead (``ops/rpe/dense.py``, O(T²·(m + d)) time, O(T²) memory per head), which does far less work there: the
FFT form's cost per token is ~m·(d + 1)·log T at any length. Padding: padded keys' features are zeroed. No
decoding path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.kernel.features import favor_key_shift, favor_plus, orthogonal_gaussian
from ..ops.rpe import dense, fft, naive
from .attention import QKVConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class KernelRpeConfig(QKVConfig):
    """Attributes:
        max_len: longest sequence; the model learns 2·max_len − 1 relative weights per head (required).
        num_features: m, random features of φ.
    """

    max_len: int | None = None
    num_features: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len <= 0:
            raise ValueError(f"max_len is required and must be a positive int, got {self.max_len!r}")
        if self.num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {self.num_features!r}")


#: Longest sequence computed in the dense form: below it the dense form was 8x (T = 2048) to 800x (T = 64) faster
#: than the FFT form (docs/results/kernel_rpe_dense/), and its [B, H, T, T] weights stay small; the bench's long
#: sequences (T >= 4096) measure the FFT form, the paper's method.
DENSE_MAX_LEN = 2048


@MIXERS.register("kernel_rpe_fft")
class KernelRpeFFT(AttentionMixer):
    """Kernelized attention with RPE via FFT (Luo et al. 2021); x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = KernelRpeConfig
    config: KernelRpeConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="T·log T·m·d", time_exponent=1, log_exponent=1)
    example_options = {"max_len": 64, "num_features": 16}

    def __init__(self, config: KernelRpeConfig) -> None:
        super().__init__(config)
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
        w = orthogonal_gaussian(config.num_features, config.head_dim, torch.Generator().manual_seed(seed))
        self.register_buffer("projection", w)  # [m, d]
        self.rpe_logits = nn.Parameter(torch.zeros(config.num_heads, 2 * config.max_len - 1))

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q ``[B, H, T, d]``, k ``[B, H_kv, T, d]`` -> φ(q), φ(k) ``[B, H, T, m]`` (float32, or float64)."""
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32
        scale = q.shape[-1] ** -0.25
        w = self.projection.to(cd)
        phi_q = favor_plus(q.to(cd) * scale, w, is_query=True)
        phi_k = favor_plus(repeat_kv(k, q.shape[1]).to(cd) * scale, w, is_query=False,
                           key_shift=favor_key_shift(self.projection))  # from the buffer: survives load_state_dict
        return phi_q, phi_k

    def rel_weights(self, t: int) -> Tensor:
        """b for offsets −(T−1) .. T−1: ``[H, 2T − 1]``, positive."""
        c = self.config.max_len - 1
        return torch.exp(self.rpe_logits[:, c - (t - 1): c + t])

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        phi_q, phi_k = self.features(q, k)
        path = dense if q.shape[2] <= DENSE_MAX_LEN else fft
        o = path.kernel_rpe_attention(phi_q, phi_k, repeat_kv(v, q.shape[1]), self.rel_weights(q.shape[2]),
                                      causal=self.config.causal, key_padding_mask=key_padding_mask)
        return o.to(q.dtype)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        phi_q, phi_k = self.features(q, k)
        o = naive.kernel_rpe_attention(phi_q, phi_k, repeat_kv(v, q.shape[1]).to(phi_q.dtype),
                                       self.rel_weights(q.shape[2]).to(phi_q.dtype), causal=self.config.causal,
                                       key_padding_mask=key_padding_mask)
        return o.to(q.dtype)
