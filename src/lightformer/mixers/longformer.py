"""``longformer``: sliding-window attention plus global tokens (Longformer).

Beltagy, Peters, Cohan 2020, "Longformer: The Long-Document Transformer", Sec. 3.1. Each token attends to a window
of ``window`` keys around it ("Sliding Window"; causal: the ``window`` most recent keys including itself,
non-causal: ``window // 2`` on each side) and the first ``num_global`` tokens are global: they attend to every key
and every query attends to them ("Global Attention"). With causal=True the global tokens are still the first
positions and causality holds: a global token sees only the keys before it, every token the global tokens before it.

    Attention(Q, K, V)_i = softmax_{j ∈ N(i)}(q_i·k_j / sqrt(d)) v_j,
    N(i) = {j : -left <= j - i <= right} ∪ {j < g} ∪ (all j if i < g)            (∩ {j <= i} if causal)

Projections: the paper uses separate Q_g, K_g, V_g projections for the global attention (Sec. 3.1, "Linear
Projections for Global Attention"); here the global and local parts share the fused QKV projection of
``AttentionMixer`` (so the parameters are those of ``softmax`` and a state dict loads into either).

x: ``[B, T, D]`` -> ``[B, T, D]``; time O(T·(window + num_global)·d), memory O(T·(window + num_global)) (the window
probabilities kept for the backward, see ``ops/local/blocked.py``, and ``[T, num_global]`` global-key weights, see
``ops/sparse/longformer.py``).
Padding masks and RoPE supported; no decode path.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..ops.sparse import naive
from ..ops.sparse.longformer import longformer_attention
from .attention import RotaryConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class LongformerConfig(RotaryConfig):
    """Attributes:
        window: keys in the sliding window (causal: the most recent, including the token itself; non-causal:
            ``window // 2`` on each side plus itself). Paper: 512 (Sec. 4); bench default 256.
        num_global: global tokens, the first positions of the sequence (e.g. a CLS token); 0 = pure sliding window.
    """

    window: int = 256
    num_global: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"window must be a positive int, got {self.window!r}")
        if self.num_global < 0:
            raise ValueError(f"num_global must be an int >= 0, got {self.num_global!r}")


@MIXERS.register("longformer")
class Longformer(AttentionMixer):
    """Sliding-window + global-token attention. x ``[B, T, D]`` -> ``[B, T, D]``; O(T·(window + num_global)·d)."""

    config_class = LongformerConfig
    config: LongformerConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="T·(window+num_global)·d", positions=frozenset({"none", "rope"}),
                                time_exponent=1)
    example_options = {"window": 4, "num_global": 2}

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        h = self.config.num_heads
        return longformer_attention(q, repeat_kv(k, h), repeat_kv(v, h), window=self.config.window,
                                    num_global=self.config.num_global, causal=self.config.causal,
                                    key_padding_mask=key_padding_mask)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        h = self.config.num_heads
        return naive.longformer_attention(q, repeat_kv(k, h), repeat_kv(v, h), window=self.config.window,
                                            num_global=self.config.num_global, causal=self.config.causal,
                                            key_padding_mask=key_padding_mask)
