"""``tiled_softmax``: exact multi-head attention through our own FlashAttention-style kernel.

    O = softmax(Q Kᵀ / sqrt(d) + bias) V, computed over key blocks with an online softmax
    (Dao et al. 2022, "FlashAttention", Alg. 1; FlashAttention-2's deferred normalisation, Dao 2023)

Only the output and the per-row log-sum-exp are kept for backward, which recomputes the score blocks, so extra
memory is O(T) in forward *and* backward. Causal masking, padding, ALiBi and T5's learned relative bias
(``position="t5"``: the table ``rel_bias [t5_num_buckets, H]``, its gradient accumulated block by block) are
computed per block — unlike SDPA, whose fused CPU kernel takes no bias and needs a materialised ``[T, T]`` mask for
padding or ALiBi (``[H, T, T]`` for T5). Parameters are those of ``softmax`` (``mixers/attention.py``), so a state
dict loads into either.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..ops.softmax.tiled import tiled_attention
from .attention import AttentionMixer, ExactAttentionConfig, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class TiledSoftmaxConfig(ExactAttentionConfig):
    """``block_size``: query/key rows per tile (``None`` = chosen from T and head_dim by the kernel)."""

    block_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size is not None and self.block_size <= 0:
            raise ValueError(f"block_size must be a positive int or None, got {self.block_size!r}")


@MIXERS.register("tiled_softmax")
class TiledSoftmaxAttention(AttentionMixer):
    """Exact attention, O(T²·d) time, O(T·d) memory. x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = TiledSoftmaxConfig
    config: TiledSoftmaxConfig
    capabilities = Capabilities(exact=True, causal=True, padding_mask=True, decode=True, complexity="T²·d",
                                prefill=True, positions=frozenset({"none", "rope", "alibi", "t5"}), time_exponent=2)
    example_options = {"block_size": 4}
    # T5's table is a set of additive logit offsets, not a weight matrix: decay would pull it to "no position"
    no_weight_decay = ("rel_bias",)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
               key_bias: Tensor | None = None) -> Tensor:
        h = q.shape[1]
        return tiled_attention(q, repeat_kv(k, h), repeat_kv(v, h), causal=self.config.causal,
                               key_padding_mask=key_padding_mask, alibi_slopes=self.alibi_slopes,
                               rel_bias=self.rel_bias, rel_bucket=self.rel_bucket, block_size=self.config.block_size,
                               key_bias=key_bias)
