"""``dilated_window``: dilated sliding-window attention (1-D dilated neighborhood attention).

Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer", Sec. 3 (Eq. 2-4, dilated neighborhood attention,
written here for a 1-D sequence). Query i attends to ``window`` keys spaced ``dilation`` = δ apart:

    N_δ(i) = {i + δ·o : o = 0, -1, .., -(window-1)}          causal
    N_δ(i) = {i + δ·o : |o| <= window // 2}                   non-causal
    Attention(Q, K, V)_i = softmax_{j ∈ N_δ(i)}(q_i·k_j / sqrt(d)) v_j

so the receptive field grows to δ·window tokens at the cost of ``window``. Computed by splitting the sequence into δ
interleaved sub-sequences (positions ≡ r mod δ) and running a plain blocked sliding window on each
(``ops/sparse/dilated.py``). dilation=1 is the plain sliding window.

x: ``[B, T, D]`` -> ``[B, T, D]``; time O(T·window·d), memory O(T·window) at most (``ops/sparse/blocked.py``).
Padding masks and RoPE supported; no decode path. Parameters: the fused QKV and output projections of
``AttentionMixer`` (those of ``softmax``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..ops.sparse import naive
from ..ops.sparse.dilated import dilated_window_attention
from .attention import RotaryConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class DilatedWindowConfig(RotaryConfig):
    """Attributes:
        window: keys per query (causal: the token and its ``window - 1`` predecessors at steps of ``dilation``;
            non-causal: ``window // 2`` on each side).
        dilation: step δ between the keys of the window (1 = plain sliding window).
    """

    window: int = 256
    dilation: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window", "dilation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@MIXERS.register("dilated_window")
class DilatedWindow(AttentionMixer):
    """Dilated sliding-window attention. x ``[B, T, D]`` -> ``[B, T, D]``; O(T·window·d)."""

    config_class = DilatedWindowConfig
    config: DilatedWindowConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False, complexity="T·window·d",
                                positions=frozenset({"none", "rope"}), time_exponent=1)
    example_options = {"window": 3, "dilation": 2}

    def _attend_with(self, op, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        h = cfg.num_heads
        return op(q, repeat_kv(k, h), repeat_kv(v, h), window=cfg.window, dilation=cfg.dilation, causal=cfg.causal,
                  key_padding_mask=key_padding_mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._attend_with(dilated_window_attention, q, k, v, key_padding_mask)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._attend_with(naive.dilated_window_attention, q, k, v, key_padding_mask)
