"""``hilo``: HiLo attention in 1-D (high-frequency local heads + low-frequency pooled heads).

Pan, Cai, Zhuang 2022, "Fast Vision Transformers with HiLo Attention", Sec. 3.2, written for a 1-D sequence. The
heads are split by ``alpha``: ``L = round(alpha·H)`` Lo-Fi heads and ``H - L`` Hi-Fi heads (paper: alpha = 0.9).

    Hi-Fi (heads ``[:H-L]``): attention within non-overlapping windows of ``window`` tokens (local detail);
    Lo-Fi (heads ``[H-L:]``): every query attends to keys/values average-pooled over those windows (global context);
    HiLo(X) = [Hi-Fi(X); Lo-Fi(X)] W_o                              (the two outputs concatenated, then projected)

Pooling after the shared projection equals the paper's projection of the pooled input (average pooling and a linear
map commute, the mean weights summing to 1), so the parameters are the fused QKV and output projections of
``AttentionMixer``. Padding: masked tokens are excluded from the pools (mean over real tokens; a window with no real
token is hidden) and from the windows. Causal (not in the paper; exact): Hi-Fi windows add ``j <= i``; Lo-Fi sees only
windows completed at the query, ``(p + 1)·window - 1 <= i``, so no pooled value contains a future token (a query in the
first window has no Lo-Fi context: those heads output 0). Relative positions: none (a pooled key has no position).

x: ``[B, T, D]`` -> ``[B, T, D]``; time O(T·window·d) for the Hi-Fi heads plus O(T·(T/window)·d) for the Lo-Fi heads
(every query sees the T/window pools: quadratic in T with a 1/window factor, as in the paper, where the Lo-Fi cost
is N·N/s²); memory O(T·window + T·d) (``ops/sparse/blocked.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..ops.sparse import naive
from ..ops.sparse.hilo import hilo_attention
from .attention import QKVConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class HiLoConfig(QKVConfig):
    """Attributes:
        window: Hi-Fi window size and Lo-Fi pooling size, in tokens (paper, 2-D: 2×2).
        alpha: fraction of the heads that are Lo-Fi, in [0, 1]; ``round(alpha·num_heads)`` heads (half up).
    """

    window: int = 256
    alpha: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"window must be a positive int, got {self.window!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")

    @property
    def num_lofi(self) -> int:
        """Number of Lo-Fi heads (the last ones)."""
        return int(self.alpha * self.num_heads + 0.5)


@MIXERS.register("hilo")
class HiLo(AttentionMixer):
    """HiLo attention (1-D). x ``[B, T, D]`` -> ``[B, T, D]``; O(T·window·d + T²·d/window)."""

    config_class = HiLoConfig
    config: HiLoConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="T·window·d + T²·d/window", time_exponent=2)
    example_options = {"window": 4, "alpha": 0.5}

    def _attend_with(self, op, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        h = cfg.num_heads
        return op(q, repeat_kv(k, h), repeat_kv(v, h), window=cfg.window, num_lofi=cfg.num_lofi, causal=cfg.causal,
                  key_padding_mask=key_padding_mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._attend_with(hilo_attention, q, k, v, key_padding_mask)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._attend_with(naive.hilo_attention, q, k, v, key_padding_mask)
