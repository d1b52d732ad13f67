"""``aft_local``: AFT-local, Zhai et al. 2021, "An Attention Free Transformer", Sec. 3.2.

AFT-full (Eq. 2) with the learned position biases kept only in a local band:

    w_{t,t'} = w_{t,t'} if |t − t'| < window else 0
    Y_t = σ(Q_t) ⊙ Σ_t' exp(K_t' + w_{t,t'}) ⊙ V_t' / Σ_t' exp(K_t' + w_{t,t'})      (t' <= t when causal)

Outside the band the bias is 0, not −∞: every token still reaches every other through exp(K) (global context), the
band only re-weights the neighbours. The biases are stored as the band alone, ``pos_bias`` ``[max_len,
2·window − 1]`` (column δ + window − 1 = offset δ = t' − t; causal uses δ <= 0), initialised to 0.
x: ``[B, T, D]`` -> ``[B, T, D]``, T <= ``max_len``.

Complexity O(T·window·d) time and memory, no ``[T, T]`` tensor (``ops/aft/local.py``: the all-keys sums of
AFT-simple plus one blocked band matmul). Padding: padded keys are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.aft import local, naive
from .aft_simple import qkv_channels
from .attention import QKVConfig, AttentionMixer
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class AftLocalConfig(QKVConfig):
    """Attributes:
        max_len: longest sequence (the biases depend on absolute positions t, t'); required.
        window: band half-width s: biases are learned for |t − t'| < s.
    """

    max_len: int | None = None
    window: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len <= 0:
            raise ValueError(f"max_len is required and must be a positive int, got {self.max_len!r}")
        if self.window <= 0:
            raise ValueError(f"window must be a positive int, got {self.window!r}")


@MIXERS.register("aft_local")
class AftLocal(AttentionMixer):
    """AFT-local (Zhai et al. 2021, Sec. 3.2); x ``[B, T, D]`` -> ``[B, T, D]``, O(T·window·d)."""

    config_class = AftLocalConfig
    config: AftLocalConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="T·window·d", time_exponent=1)
    example_options = {"max_len": 64, "window": 4}

    def __init__(self, config: AftLocalConfig) -> None:
        super().__init__(config)
        self.pos_bias = nn.Parameter(torch.zeros(config.max_len, 2 * config.window - 1))

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        y = local.aft_local(*qkv_channels(self, x), self.pos_bias, self.config.window, causal=self.config.causal,
                           key_padding_mask=key_padding_mask)
        return self.out(y)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        y = naive.aft_local(*qkv_channels(self, x), self.pos_bias, self.config.window, causal=self.config.causal,
                            key_padding_mask=key_padding_mask)
        return self.out(y)
