"""``sliding_window``: local softmax attention in a window around each token.

    causal:      query t attends to the ``window`` most recent keys, t − window + 1 … t
    non-causal:  query t attends to t − window//2 … t + window//2

After ToMe token merging (``models/tome.py``) the window counts tokens of the *merged* sequence, which keeps the
original order: query t sees the ``window // 2`` merged tokens on each side, which together stand for more of the
original positions (a merged token's RoPE position is the size-weighted mean of its members'; only the window's
extent is by index).

(Longformer, Beltagy et al. 2020, Sec. 3.1 "Sliding Window"; local attention of Child et al. 2019.) Computed block
by block (``ops/local/blocked.py``), so time and memory are O(T·window·d), never a masked T×T matrix; decoding keeps
only the last ``window`` keys. Parameters are those of ``softmax``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..ops.local.blocked import sliding_window_attention
from ..ops.local.naive import window_bounds
from .attention import AttentionConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class SlidingWindowConfig(AttentionConfig):
    """``window``: keys each query sees (see module docstring); ``block_size``: query rows per block
    (``None`` = chosen by the kernel from the window)."""

    window: int = 256
    block_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        window_bounds(self.window, self.causal)  # validates window
        if self.block_size is not None and self.block_size <= 0:
            raise ValueError(f"block_size must be a positive int or None, got {self.block_size!r}")


@MIXERS.register("sliding_window")
class SlidingWindowAttention(AttentionMixer):
    """Sliding-window attention, O(T·window·d). x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = SlidingWindowConfig
    config: SlidingWindowConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, complexity="T·w·d",
                                prefill=True, positions=frozenset({"none", "rope", "alibi"}), time_exponent=1)
    example_options = {"window": 5, "block_size": 4}

    def window_bounds(self) -> tuple[int, int]:
        return window_bounds(self.config.window, self.config.causal)

    def decode_window(self) -> int:
        return self.config.window

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
               key_bias: Tensor | None = None) -> Tensor:
        h = q.shape[1]
        return sliding_window_attention(q, repeat_kv(k, h), repeat_kv(v, h), window=self.config.window,
                                        causal=self.config.causal, key_padding_mask=key_padding_mask,
                                        alibi_slopes=self.alibi_slopes, block_size=self.config.block_size,
                                        key_bias=key_bias)
