"""``global_context``: the global context (GC) block of GCNet (Cao, Xu, Lin, Wei, Hu 2019, "GCNet: Non-local
Networks Meet Squeeze-Excitation Networks and Beyond", ICCV workshops, arXiv 1904.11492, Sec. 4, Eq. 4, Fig. 4d),
over a sequence:

    context modelling   c = Σ_j softmax_j(W_k x_j) x_j                           W_k: D -> 1 (the 1×1 conv)
    transform           δ = W_v2 ReLU(LN(W_v1 c))                               W_v1: D -> D·ratio, W_v2: D·ratio -> D
    fusion              z_i = x_i + δ         (the block adds x; the mixer returns δ at every position i)

x: ``[B, T, D]`` -> ``[B, T, D]``. Default ratio 1/16 (the paper's r = 16; its "r4" variants use 1/4), bottleneck
width max(1, int(D·ratio)). Parameter names follow the reference ``ContextBlock``: ``conv_mask`` (W_k, no bias: a
bias is a constant shift of every score, which the softmax cancels), ``channel_add_conv`` = (W_v1, LN, ReLU, W_v2).
``init_weights`` sets the reference init: W_k Kaiming-normal (fan-in), W_v2 zero (so the block starts as the
identity). Complexity O(T·D + D²·ratio) non-causal (``ops/metaformer/context.py``); oracle: an explicit softmax per
position (``ops/metaformer/naive.py``). ``num_heads`` is accepted and unused (one pooling head, as published).

Causal (``causal=True``) is OUR EXTENSION, not in the paper: position t pools over j <= t (prefix softmax), and the
transform runs per position, O(T·L·D + T·D²·ratio) with chunks of L = ``chunk_size`` tokens. It decodes through a
running (max, sum, weighted sum) of the scores: ``ContextState`` m ``[B]``, l ``[B]``, u ``[B, D]`` (float32, float64
for float64 inputs), prefilled in one chunked pass.

Padding: padded positions are left out of the softmax (exact: real positions equal the unpadded run); outputs at
padded positions are finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn.state import State
from ..ops.metaformer import context, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class GlobalContextConfig(MixerConfig):
    """Options of ``global_context``.

    Attributes:
        ratio: bottleneck ratio of the transform, width max(1, int(dim·ratio)) (default 1/16, the paper's r = 16).
        chunk_size: tokens per chunk of the causal form (the intra-chunk part is an L×L matmul per chunk).

    Raises:
        ValueError: ``ratio`` not in (0, 1] or ``chunk_size`` < 1 (named in the message).
    """

    ratio: float = 1.0 / 16
    chunk_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")

    @property
    def planes(self) -> int:
        """The bottleneck width D·ratio (at least 1)."""
        return max(1, int(self.dim * self.ratio))


@dataclass(frozen=True)
class ContextState(State):
    """Decoding state after ``length`` tokens (causal form): running max ``m [B]`` of the scores W_k x_j, ``l [B]``
    = Σ_j e^{a_j − m}, ``u [B, D]`` = Σ_j e^{a_j − m} x_j; (−∞, 0, 0) before the first token. float32 (float64 for
    float64 inputs)."""

    m: Tensor
    l: Tensor
    u: Tensor


@MIXERS.register("global_context")
class GlobalContext(Mixer):
    """GCNet's GC block (Cao et al. 2019, Eq. 4) as a token mixer: x ``[B, T, D]`` -> δ broadcast to ``[B, T, D]``
    (per position when causal, our extension). Output dtype: x's (autocast's under autocast)."""

    config_class = GlobalContextConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, prefill=True,
                                complexity="T·D (causal: T·L·D + T·D²·ratio)", time_exponent=1)
    example_options = {"ratio": 0.25, "chunk_size": 4}
    residual_projections = ("channel_add_conv.3.weight",)

    def __init__(self, config: GlobalContextConfig) -> None:
        super().__init__(config)
        d, p = config.dim, config.planes
        self.conv_mask = nn.Linear(d, 1, bias=False)  # W_k
        self.channel_add_conv = nn.Sequential(nn.Linear(d, p), nn.LayerNorm(p), nn.ReLU(), nn.Linear(p, d))

    def init_weights(self, num_layers: int) -> None:
        """The reference init (``ContextBlock.reset_parameters``): W_k Kaiming-normal with fan-in, the last
        transform layer zero, so the block starts as the identity."""
        with torch.no_grad():
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.channel_add_conv[3].weight)
            nn.init.zeros_(self.channel_add_conv[3].bias)

    def _transform(self, c: Tensor, x: Tensor) -> Tensor:
        """δ = W_v2 ReLU(LN(W_v1 c)) for c ``[B, T', D]`` (stat dtype), broadcast to x's shape, in x's dtype (or
        autocast's)."""
        delta = self.channel_add_conv(c.to(x.dtype))
        return delta.expand(x.shape[0], x.shape[1], delta.shape[-1])

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        c, _ = context.context_pool(x, self.conv_mask.weight[0], causal=self.config.causal,
                                    key_padding_mask=key_padding_mask, chunk_size=self.config.chunk_size)
        return self._transform(c, x)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        c, _ = naive.context_pool(x, self.conv_mask.weight[0], causal=self.config.causal,
                                  key_padding_mask=key_padding_mask)
        return self._transform(c, x)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> ContextState:
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        return ContextState(0, *context.empty_state(batch_size, self.config.dim, device, sd))

    def _check_state(self, state: State) -> ContextState:
        if not isinstance(state, ContextState):
            raise TypeError(f"state must be the ContextState from init_state/step/forward, got "
                            f"{type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, ContextState]:
        state = self._check_state(state)
        c, (m, l, u) = context.context_pool(x, self.conv_mask.weight[0], causal=True,
                                            initial_state=(state.m, state.l, state.u), output_final_state=True,
                                            chunk_size=self.config.chunk_size)
        sd = state.u.dtype
        return self._transform(c, x), ContextState(state.length + x.shape[1], m.to(sd), l.to(sd), u.to(sd))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, ContextState]:
        state = self._check_state(state)
        c, (m, l, u) = context.context_pool_step(x_t, self.conv_mask.weight[0], (state.m, state.l, state.u))
        return self.channel_add_conv(c.to(x_t.dtype)), ContextState(state.length + 1, m, l, u)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs (multiply-add = 2), P = D·ratio, L = chunk_size, T' = 1 (non-causal) or T (causal):
        scores 2·T·D; pooling 2·T·D (non-causal) or 2·T·L·D + 2·T·D (causal: intra-chunk matmul, chunk sums);
        transform T'·(4·D·P + 8·P) (two linear maps, LayerNorm and ReLU)."""
        t, d, p = seq_len, self.config.dim, self.config.planes
        if self.config.causal:
            pooling, rows = 2.0 * t * self.config.chunk_size * d + 2.0 * t * d, t
        else:
            pooling, rows = 2.0 * t * d, 1
        return float(batch * (2.0 * t * d + pooling + rows * (4.0 * d * p + 8.0 * p)))
