"""``gfnet``: the global filter layer of GFNet (Rao, Zhao, Zhu, Lu, Zhou 2021, "Global Filter Networks for Image
Classification", NeurIPS, arXiv 2107.00645, Sec. 3.2, Eq. 3-5), in one dimension (the sequence):

    X = rfft(x, n, norm='ortho')  [B, n//2+1, D],   X̃ = W ⊙ X,   y = irfft(X̃, n, norm='ortho')[:T]

with a learnable complex filter W ``[n//2 + 1, D]``, n = ``max_len``, stored as the real parameter
``complex_weight [n//2 + 1, D, 2]`` (real, imaginary) and initialised 0.02·randn as the reference ``GlobalFilter``.
It is a circular depthwise convolution of length n whose kernel is irfft(W). Parameters (n//2 + 1)·D·2; no
projections, no heads (``num_heads`` is accepted and unused). Complexity O(n·D·log n) (``ops/metaformer/fft.py``);
oracle: the same transform with explicit DFT matrices (``ops/metaformer/naive.py``).

The filter is tied to n = ``max_len`` (required). A sequence of T < n tokens is zero-padded to n: its output is
exactly the first T rows of the length-n output for x followed by n − T zero tokens (the top-left T×T block of the
circulant). The filter is not interpolated (GFNet resizes its filters only to fine-tune at another resolution).
T > n raises ValueError naming ``max_len``.

Non-causal only (a causal filter needs zero-padding to 2T: a long convolution, another family). Padding is refused
(``key_padding_mask`` raises ValueError): the circular convolution wraps the end of the sequence onto its start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.metaformer import fft, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class GFNetConfig(MixerConfig):
    """Options of ``gfnet``.

    Attributes:
        max_len: n, the filter's length in positions (required): the FFT size, and the longest T accepted.

    Raises:
        ValueError: ``max_len`` missing or not positive (named in the message).
    """

    max_len: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len is None or self.max_len <= 0:
            raise ValueError(f"max_len is required for gfnet (the global filter has max_len//2 + 1 frequencies) "
                             f"and must be a positive int, got {self.max_len!r}")


@MIXERS.register("gfnet")
class GFNet(Mixer):
    """GFNet's global filter (Rao et al. 2021, Eq. 3-5) along the sequence: x ``[B, T, D]`` -> ``[B, T, D]``,
    T <= ``max_len``; same dtype as x (half precision is filtered in float32)."""

    config_class = GFNetConfig
    capabilities = Capabilities(exact=False, causal=False, padding_mask=False, decode=False,
                                complexity="n·D·log n (n = max_len)", time_exponent=1, log_exponent=1)
    example_options = {"max_len": 33}
    residual_projections: tuple[str, ...] = ()

    def __init__(self, config: GFNetConfig) -> None:
        super().__init__(config)
        self.complex_weight = nn.Parameter(torch.randn(config.max_len // 2 + 1, config.dim, 2) * 0.02)

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def init_weights(self, num_layers: int) -> None:
        """The reference init, 0.02·randn on the real and imaginary parts (``GlobalFilter.__init__``)."""
        with torch.no_grad():
            self.complex_weight.normal_(0.0, 0.02)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return fft.global_filter(x, self.complex_weight, n=self.config.max_len)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return naive.global_filter(x, self.complex_weight, n=self.config.max_len)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs (5·N·log2 N per N-point complex FFT, half for a real one), n = max_len whatever T:
        B·D·(2·2.5·n·log2 n + 6·(n//2 + 1)) (rfft, the complex product, irfft)."""
        n, d = self.config.max_len, self.config.dim
        return float(batch * d * (5.0 * n * math.log2(max(n, 2)) + 6.0 * (n // 2 + 1)))
