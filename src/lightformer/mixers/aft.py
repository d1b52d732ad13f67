"""``aft``: AFT-full, the attention-free mixer of Zhai et al. 2021, "An Attention Free Transformer", Eq. 2.

    Y_t = σ(Q_t) ⊙ Σ_t' exp(K_t' + w_{t,t'}) ⊙ V_t' / Σ_t' exp(K_t' + w_{t,t'})      (t' <= t when causal)

with a learned pairwise position bias w ``[max_len, max_len]`` (initialised to 0, where AFT-full equals
AFT-simple). Q, K, V come from the shared fused projection of ``AttentionMixer`` (heads are only a reshape: AFT
mixes each channel on its own), Y goes through ``out``. x: ``[B, T, D]`` -> ``[B, T, D]``, T <= ``max_len``.

Complexity O(T²·d) time (the paper's: numerator and denominator are exp(w) ``[T, T]`` times ``[T, d]`` matrix
products, ``ops/aft/full.py``), O(T² + T·d) memory. Padding: padded keys are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.aft import full, naive
from .aft_simple import qkv_channels
from .attention import QKVConfig, AttentionMixer
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class AftConfig(QKVConfig):
    """Attributes:
        max_len: longest sequence, the size of the bias matrix w (required).
    """

    max_len: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len <= 0:
            raise ValueError(f"max_len is required and must be a positive int, got {self.max_len!r}")


@MIXERS.register("aft")
class AftFull(AttentionMixer):
    """AFT-full (Zhai et al. 2021, Eq. 2); x ``[B, T, D]`` -> ``[B, T, D]``, O(T²·d)."""

    config_class = AftConfig
    config: AftConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False, complexity="T²·d",
                                time_exponent=2)
    example_options = {"max_len": 64}

    def __init__(self, config: AftConfig) -> None:
        super().__init__(config)
        self.pos_bias = nn.Parameter(torch.zeros(config.max_len, config.max_len))  # w[t, t']

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        y = full.aft_full(*qkv_channels(self, x), self.pos_bias, causal=self.config.causal,
                           key_padding_mask=key_padding_mask)
        return self.out(y)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        y = naive.aft_full(*qkv_channels(self, x), self.pos_bias, causal=self.config.causal,
                            key_padding_mask=key_padding_mask)
        return self.out(y)
