"""``poolformer``: PoolFormer's pooling token mixer (Yu, Luo, Zhou, Si, Zhou, Wang, Feng, Yan 2022, "MetaFormer Is
Actually What You Need for Vision", CVPR, arXiv 2111.11418, Sec. 3.1, Eq. 4 and Alg. 1), in one dimension:

    y_t = mean{x_s : s in window(t)} − x_t                  x: [B, T, D] -> y: [B, T, D]

the reference ``AvgPool(pool_size, stride=1, padding=pool_size//2, count_include_pad=False)(x) − x`` (the −x because
the block adds the residual back). window(t) = [t − p, t + p], p = pool_size // 2 (pool_size odd), clipped to the
sequence. No parameters, no heads (``num_heads`` is accepted and unused); default pool_size = 3 (the paper's).
Complexity O(pool_size·T·D) (``ops/metaformer/pool.py``: shifted sums); oracle: an explicit loop over each window
(``ops/metaformer/naive.py``).

Causal (``causal=True``) is OUR EXTENSION, not in the paper: window(t) = [t − pool_size + 1, t], the mean of the last
pool_size tokens (fewer at the start, as count_include_pad=False) minus x_t; any pool_size >= 1. It decodes with
the last pool_size − 1 inputs as its state (``PoolState.window [B, pool_size − 1, D]``, float32, float64 for float64
inputs), prefilled in one pass.

Padding: padded tokens are left out of every mean (count_include_pad=False semantics), so outputs at real positions
equal the unpadded run exactly for left- or right-padded sequences; padded positions get finite outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.state import State
from ..ops.metaformer import naive, pool
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class PoolFormerConfig(MixerConfig):
    """Options of ``poolformer``.

    Attributes:
        pool_size: tokens per window (default 3, the paper's); odd when ``causal=False`` (a centred window).

    Raises:
        ValueError: ``pool_size`` < 1, or even with ``causal=False`` (named in the message).
    """

    pool_size: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {self.pool_size!r}")
        if not self.causal and self.pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd when causal=False (a window centred on each token), "
                             f"got {self.pool_size!r}")


@dataclass(frozen=True)
class PoolState(State):
    """Decoding state after ``length`` tokens: ``window [B, pool_size − 1, D]``, the last pool_size − 1 inputs
    (rows before the first token are zeros and are not counted), float32 (float64 for float64 inputs)."""

    window: Tensor


@MIXERS.register("poolformer")
class PoolFormer(Mixer):
    """Average pooling minus identity (Yu et al. 2022, Eq. 4): x ``[B, T, D]`` -> ``[B, T, D]``, same dtype.
    Parameter-free. ``causal=True`` is our extension (see the module docstring)."""

    config_class = PoolFormerConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, prefill=True,
                                complexity="T·D·pool_size", time_exponent=1)
    example_options = {"pool_size": 3}
    residual_projections: tuple[str, ...] = ()

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return pool.avg_pool(x, self.config.pool_size, causal=self.config.causal,
                             key_padding_mask=key_padding_mask)[0]

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return naive.avg_pool(x, self.config.pool_size, causal=self.config.causal,
                              key_padding_mask=key_padding_mask)[0]

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> PoolState:
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        return PoolState(length=0, window=torch.zeros(batch_size, self.config.pool_size - 1, self.config.dim,
                                                      device=device, dtype=sd))

    def _check_state(self, state: State) -> PoolState:
        if not isinstance(state, PoolState):
            raise TypeError(f"state must be the PoolState from init_state/step/forward, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, PoolState]:
        state = self._check_state(state)
        y, window = pool.avg_pool(x, self.config.pool_size, causal=True, initial_state=state.window,
                                  start=state.length, output_final_state=True)
        return y, PoolState(state.length + x.shape[1], window.to(state.window.dtype))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, PoolState]:
        state = self._check_state(state)
        k = self.config.pool_size
        full = torch.cat([state.window.to(x_t.dtype), x_t[:, None]], dim=1)  # [B, k, D]
        count = min(state.length + 1, k)
        y = full[:, k - count:].sum(dim=1) / count - x_t
        return y, PoolState(state.length + 1, full[:, 1:].to(state.window.dtype))

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: pool_size − 1 additions, one division and one subtraction per element:
        B·T·D·(pool_size + 1)."""
        return float(batch * seq_len * self.config.dim * (self.config.pool_size + 1))
