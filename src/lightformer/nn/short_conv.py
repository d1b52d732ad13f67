"""The short causal depthwise convolution of the state-space and recurrent mixers, with its decoding state.

Mamba (Gu & Dao 2023, Sec. 3.4: ``d_conv=4``), Mamba-2, DeltaNet and Gated DeltaNet (Yang et al. 2024, 2025:
``conv_size=4``), mLSTM (Beck et al. 2024: ``conv1d_kernel_size=4``) and Hyena (Poli et al. 2023: the short filter of
order 3) each run a K-tap depthwise convolution over time before their recurrence:

    y[t, c] = bias[c] + Σ_{j<K} weight[c, j] · x[t − K + 1 + j, c]          (zeros before the first token)

``ShortConv`` holds ``weight [C, K]`` and ``bias [C]`` (or no bias) and computes it through ``ops.conv.depthwise``
(fast) or ``ops.conv.naive`` (the oracle). Its decoding state is the last K−1 inputs, ``[B, K−1, C]``: ``forward``
with a state continues a sequence (prefill) and returns the new window; ``step`` consumes one token. Neither
modifies the state it was given. Initialisation: PyTorch's ``nn.Conv1d`` default for a depthwise filter (fan-in K:
weight and bias uniform in ±1/sqrt(K)), as the reference implementations use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops.conv import depthwise, naive


class ShortConv(nn.Module):
    """Causal depthwise convolution, ``x [B, T, C] -> [B, T, C]``, with a ``[B, K−1, C]`` decoding window.

    Args:
        channels: C.
        kernel_size: K >= 1 taps (K = 1 is a per-channel scale with an empty state).
        bias: learn a per-channel bias.

    Raises:
        ValueError: ``channels`` or ``kernel_size`` not a positive int.
    """

    def __init__(self, channels: int, kernel_size: int, *, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        self.channels, self.kernel_size = channels, kernel_size
        bound = 1.0 / math.sqrt(kernel_size)
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))  # [C, K]
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, C] -> [B, T, C]`` (the fast path)."""
        return depthwise.depthwise_conv(x, self.weight, self.bias, causal=True)

    def oracle(self, x: Tensor) -> Tensor:
        """The same convolution as an explicit sum over taps (``ops.conv.naive``)."""
        y = naive.depthwise_conv(x, self.weight.to(x.dtype), causal=True)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
        """The empty window: zeros ``[B, K−1, C]`` (the zeros before the first token)."""
        return torch.zeros(batch_size, self.kernel_size - 1, self.channels, device=device, dtype=dtype)

    def forward_state(self, x: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """Continue from ``window [B, K−1, C]`` (the K−1 inputs before ``x [B, T, C]``): ``(y [B, T, C], the last
        K−1 inputs [B, K−1, C])`` in the window's dtype. ``window`` is not modified."""
        k = self.kernel_size
        full = torch.cat([window.to(x.dtype), x], dim=1)  # [B, K − 1 + T, C]
        y = depthwise.depthwise_conv(full, self.weight, self.bias, causal=True)[:, k - 1:]
        return y, full[:, full.shape[1] - (k - 1):].to(window.dtype)

    def step(self, x_t: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        """One token: ``x_t [B, C] -> (y_t [B, C], new window [B, K−1, C])``; ``window`` is not modified."""
        full = torch.cat([window.to(x_t.dtype), x_t[:, None]], dim=1)  # [B, K, C]; tap j reads x[t − K + 1 + j]
        y = (full * self.weight.T.to(x_t.dtype)).sum(dim=1)
        if self.bias is not None:
            y = y + self.bias.to(x_t.dtype)
        return y, full[:, 1:].to(window.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
