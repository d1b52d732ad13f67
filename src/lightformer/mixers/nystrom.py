"""``nystrom``: Nyström approximation of softmax attention with segment-mean landmarks.

Xiong, Zeng, Chakraborty, Tan, Fung, Li, Singh 2021, "Nyströmformer: A Nyström-Based Algorithm for Approximating
Self-Attention", Eq. 14-16 and Alg. 1:

    out = softmax(Q K̃ᵀ/√d) · Z · softmax(Q̃ Kᵀ/√d) · V  [+ DepthwiseConv(V)]                       (14)
    Z  ≈ softmax(Q̃ K̃ᵀ/√d)⁺ by ``pinv_iterations`` steps of Eq. 16 (Razavi et al. 2014)

with Q̃, K̃ the means of ``num_landmarks`` contiguous segments of Q and K. x: ``[B, T, D]`` -> ``[B, T, D]``; the
q, k, v and output projections are ``AttentionMixer``'s (``qkv``/``out``, grouped-query heads allowed).

* Segments when T is not a multiple of ``num_landmarks`` (the paper requires m | T): the n real tokens are cut
  into m balanced contiguous segments (token of rank r -> segment ⌊r·m/n⌋, sizes ⌊n/m⌋ or ⌈n/m⌉); nothing is
  truncated. With n < m, the n non-empty segments are the landmarks and the empty ones are masked out.
* Padding: padded tokens are excluded from the landmark means (ranks count real tokens only) and from the key
  softmax, so outputs at real positions equal the unpadded run.
* ``conv_kernel`` > 0 adds the paper's depthwise convolution skip on V (odd kernel, one kernel per head,
  zero-padded at the sequence ends; padded values read as zero). 0 (default) = off.
* Non-causal only: landmarks average over the whole sequence, so ``causal=True`` raises at construction.
* The oracle (``ops/lowrank/naive.py``) materialises the ``[T, T]`` product with the same Eq. 16 iteration; the
  op tests show the iteration converges to the exact ``torch.linalg.pinv``.

Complexity: O(T·m·d + m³·pinv_iterations) time, O(T·m) memory per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.lowrank import naive
from ..ops.lowrank import nystrom as fast
from .attention import QKVConfig, AttentionMixer
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class NystromConfig(QKVConfig):
    """Nyströmformer options.

    Attributes:
        num_landmarks: m, number of segment-mean landmarks (default 64, as in the paper's experiments).
        pinv_iterations: steps of the iterative pseudo-inverse, Eq. 16 (default 6, the paper's choice).
        conv_kernel: depthwise convolution skip on V with this odd kernel size; 0 = off (default).
    """

    num_landmarks: int = 64
    pinv_iterations: int = 6
    conv_kernel: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_landmarks", "pinv_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        ck = self.conv_kernel
        if isinstance(ck, bool) or not isinstance(ck, int) or ck < 0 or (ck and ck % 2 == 0):
            raise ValueError(f"conv_kernel must be 0 (off) or a positive odd int, got {ck!r}")


@MIXERS.register("nystrom")
class Nystrom(AttentionMixer):
    """Nyström self-attention (non-causal). x ``[B, T, D]`` -> ``[B, T, D]``.

    Raises:
        ValueError: ``causal=True`` (at construction).
    """

    config_class = NystromConfig
    config: NystromConfig
    capabilities = Capabilities(exact=False, causal=False, padding_mask=True, decode=False,
                                complexity="T·m·d + m³", max_len=None, positions=frozenset({"none"}), time_exponent=1)
    example_options = {"num_landmarks": 8, "conv_kernel": 3}

    def __init__(self, config: NystromConfig) -> None:
        super().__init__(config)
        if config.conv_kernel:
            # small init: the skip starts as a mild local average and attention dominates
            self.conv_weight = nn.Parameter(torch.randn(config.num_heads, config.conv_kernel)
                                            / config.conv_kernel)
        else:
            self.conv_weight = None

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))  # [B, H, T, d], [B, H_kv, T, d] x2
        o = fast.nystrom_attention(q, k, v, num_landmarks=cfg.num_landmarks, pinv_iterations=cfg.pinv_iterations,
                                   key_padding_mask=key_padding_mask, conv_weight=self.conv_weight)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        return naive.nystrom_attention(q, k, v, num_landmarks=cfg.num_landmarks, pinv_iterations=cfg.pinv_iterations,
                                         key_padding_mask=key_padding_mask, conv_weight=self.conv_weight)
