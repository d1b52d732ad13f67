"""``reversed``: reversed attention of Ding et al. 2023, "Visual Dependency Transformers: Dependency Tree Emerges
from Reversed Attention" (DependencyViT), Sec. 3.1.

Scores as in softmax attention, but normalised over the QUERY axis (the receivers) instead of the key axis: each
key j (a child node, the sender) distributes one unit of attention over the queries (its candidate parents), and
each query i gathers what it is sent:

    S = Q Kᵀ / sqrt(d),   A_ij = exp(S_ij) / Σ_{i'} exp(S_i'j)   (Σ_i A_ij = 1),   out_i = Σ_j A_ij v_j

(equivalently out = Âᵀ V with Â = softmax(K Qᵀ / sqrt(d)) row-wise, the paper's "transposed" form). Q, K, V and
the output projection are the shared ``AttentionMixer`` ones (GQA, RoPE). DependencyViT's message controller and
dynamic pooling are not part of this mixer. x: ``[B, T, D]`` -> ``[B, T, D]``.

Complexity O(T²·d) time, O(T·block) memory forward and backward (``ops/reversed/blocked.py``: complete columns per
key block, recomputation in backward). Padding: padded queries receive nothing and padded keys send nothing.

Not causal: masking to "key j sends only to queries i >= j" still normalises column j over the *future* queries
i >= j, so every past output would depend on future tokens; building it with ``causal=True`` raises ValueError.
"""

from __future__ import annotations

from torch import Tensor

from ..ops.reversed import blocked, naive
from .attention import RotaryConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@MIXERS.register("reversed")
class ReversedAttention(AttentionMixer):
    """Reversed (query-axis softmax) attention; x ``[B, T, D]`` -> ``[B, T, D]``, O(T²·d), bidirectional only."""

    config_class = RotaryConfig
    capabilities = Capabilities(exact=False, causal=False, padding_mask=True, decode=False, complexity="T²·d",
                                positions=frozenset({"none", "rope"}), time_exponent=2)
    example_options: dict = {}

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        h = q.shape[1]
        return blocked.reversed_attention(q, repeat_kv(k, h), repeat_kv(v, h), key_padding_mask=key_padding_mask)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        h = q.shape[1]
        return naive.reversed_attention(q, repeat_kv(k, h), repeat_kv(v, h), key_padding_mask=key_padding_mask)
