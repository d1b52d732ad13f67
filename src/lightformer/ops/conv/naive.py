"""Oracle of the depthwise 1-D convolution over time (one K-tap filter per channel): the explicit sum over taps.

Used by SLAB's convolution on V (``linear_relu``) and by the short causal convolutions of the state-space and
recurrent mixers (Mamba's ``d_conv``, DeltaNet's and mLSTM's short convolutions, Hyena's short filter).
"""

from __future__ import annotations

import torch
from torch import Tensor


def depthwise_conv(v: Tensor, weight: Tensor, *, causal: bool) -> Tensor:
    """Depthwise 1-D convolution over time, as the explicit sum over taps.

    Args:
        v: ``[B, T, C]``; weight: ``[C, K]`` (one K-tap filter per channel).
        causal: output t sees inputs t−K+1 .. t (zero before the start); otherwise inputs t−⌊(K−1)/2⌋ ..
            t+⌈(K−1)/2⌉ ("same" padding with zeros outside the sequence).
    Returns:
        ``[B, T, C]``: out[t, c] = Σ_j weight[c, j] · v[t − left + j, c], left = K−1 (causal) or ⌊(K−1)/2⌋.
    """
    t = v.shape[1]
    k = weight.shape[1]
    left = k - 1 if causal else (k - 1) // 2
    out = torch.zeros_like(v)
    for j in range(k):
        shift = j - left  # tap j reads position t + shift
        lo, hi = max(0, -shift), min(t, t - shift)
        if lo < hi:
            out[:, lo:hi] = out[:, lo:hi] + weight[:, j] * v[:, lo + shift:hi + shift]
    return out
