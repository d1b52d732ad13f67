"""``linear_relu``: SLAB's simplified linear attention (Guo, Chen, Tang, Wang 2024, "SLAB: Efficient Transformers
with Simplified Linear Attention and Progressive Re-parameterized Batch Normalization", ICML; Sec. 3.2, Eq. 8):

    O_i = Σ_j ReLU(Q_i)ᵀReLU(K_j) V_j / (Σ_j ReLU(Q_i)ᵀReLU(K_j) + eps) + DWC(V)_i

a ReLU feature map (cheaper than softmax-like kernels, no exp) plus a depthwise convolution over V that restores
the local, high-rank part the low-rank kernel loses. The paper's DWC is 2-D over image patches; on sequences it is
a 1-D depthwise convolution over time with ``conv_kernel`` taps per channel of V (all H·d channels), with causal
(left) zero padding when ``causal=True`` — output t sees values t−K+1 .. t only — and "same" zero padding
otherwise. Padded tokens' values are zeroed before the convolution, so a real position next to padding sees the
zeros the unpadded sequence would have.

With ReLU features a row of φ(Q) can be all zero (or see only keys with disjoint support); ``eps`` (default 1e-6)
keeps the denominator positive and the attention output of such a row is 0 (the DWC term remains).

The attention part is the chunked form of ``ops.kernel.chunked`` (causal: masked quadratic form within chunks of
``chunk_size`` tokens, a running [d, d] state across them). Decoding: the recurrence S += φ(k)vᵀ, z += φ(k)
(Katharopoulos et al. 2020, Sec. 3.4) plus the last K−1 values for the convolution. Oracle: the recurrence (causal)
or the plain sums (non-causal) plus the convolution as an explicit sum over taps (``ops.kernel.naive``).

x: ``[B, T, D]`` -> ``[B, T, D]``. Complexity O(T·d² + T·D·K) time, O(T·d) memory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.conv import depthwise as conv
from ..ops.conv import naive as conv_naive
from ..ops.kernel import naive
from ..ops.kernel.chunked import FeatureMap
from ..ops.kernel.features import relu
from .base import MIXERS, Capabilities
from .linear import KernelAttentionMixer, KernelState, LinearAttentionConfig


@dataclass(frozen=True)
class SimplifiedLinearAttentionConfig(LinearAttentionConfig):
    """Attributes:
        conv_kernel: taps K of the depthwise convolution on V (odd keeps the non-causal padding symmetric).
        (``bias`` of ``QKVConfig`` also gives the convolution a per-channel bias.)
    """

    conv_kernel: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conv_kernel < 1:
            raise ValueError(f"conv_kernel must be a positive int, got {self.conv_kernel!r}")


@MIXERS.register("linear_relu")
class SimplifiedLinearAttention(KernelAttentionMixer):
    """ReLU linear attention + depthwise convolution on V (SLAB). x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = SimplifiedLinearAttentionConfig
    config: SimplifiedLinearAttentionConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, complexity="T·d²",
                                prefill=True, time_exponent=1)
    example_options = {"chunk_size": 4, "conv_kernel": 3}

    def __init__(self, config: SimplifiedLinearAttentionConfig) -> None:
        super().__init__(config)
        channels, k = config.num_heads * config.head_dim, config.conv_kernel
        bound = 1.0 / math.sqrt(k)  # nn.Conv1d's default for a depthwise filter (fan_in = K)
        self.conv_weight = nn.Parameter(torch.empty(channels, k).uniform_(-bound, bound))  # [H·d, K]
        self.conv_bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound)) if config.bias else None

    def feature_map(self) -> FeatureMap:
        return lambda x, is_query: relu(x)

    def mix_values(self, o: Tensor, v: Tensor, key_padding_mask: Tensor | None, naive_ops: bool) -> Tensor:
        h = self.config.num_heads
        vt = rearrange(v, "b h t d -> b t (h d)")
        if key_padding_mask is not None:
            vt = vt * key_padding_mask[..., None].to(vt.dtype)
        if naive_ops:
            y = conv_naive.depthwise_conv(vt, self.conv_weight.to(vt.dtype), causal=self.config.causal)
            if self.conv_bias is not None:
                y = y + self.conv_bias.to(vt.dtype)
        else:
            y = conv.depthwise_conv(vt, self.conv_weight, self.conv_bias, causal=self.config.causal)
        return o + rearrange(y, "b t (h d) -> b h t d", h=h).to(o.dtype)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KernelState:
        state = super()._init_state(batch_size, device, dtype)
        cfg = self.config
        conv_state = torch.zeros(batch_size, cfg.conv_kernel - 1, cfg.num_heads * cfg.head_dim, device=device,
                                 dtype=state.s.dtype)  # zeros = the causal padding before the first token
        return dataclasses.replace(state, conv=conv_state)

    def prefill_values(self, o: Tensor, v: Tensor, old: KernelState, new: KernelState
                       ) -> tuple[Tensor, KernelState]:
        """The causal convolution over the K−1 values before this call and the T new ones; the last K−1 values
        become the new conv state."""
        h, k = self.config.num_heads, self.config.conv_kernel
        vt = rearrange(v, "b h t d -> b t (h d)")
        window = torch.cat([old.conv.to(vt.dtype), vt], dim=1)  # [B, K − 1 + T, H·d]
        y = conv.depthwise_conv(window, self.conv_weight, self.conv_bias, causal=True)[:, k - 1:]
        o = o + rearrange(y, "b t (h d) -> b h t d", h=h).to(o.dtype)
        return o, dataclasses.replace(new, conv=window[:, window.shape[1] - (k - 1):].to(old.conv.dtype))

    def step_values(self, o: Tensor, v_t: Tensor, state: KernelState) -> tuple[Tensor, KernelState]:
        window = torch.cat([state.conv, rearrange(v_t, "b h d -> b 1 (h d)").to(state.conv.dtype)], dim=1)
        y = (window * self.conv_weight.T.to(window.dtype)).sum(dim=1)  # [B, H·d]: tap j reads v[t − K + 1 + j]
        if self.conv_bias is not None:
            y = y + self.conv_bias.to(y.dtype)
        state = dataclasses.replace(state, conv=window[:, 1:])
        return o + rearrange(y, "b (h d) -> b h d", h=self.config.num_heads).to(o.dtype), state
