"""``fnet``: FNet's Fourier token mixing (Lee-Thorp, Ainslie, Eckstein, Ontañón 2022, "FNet: Mixing Tokens with
Fourier Transforms", NAACL, arXiv 2105.03824, Sec. 3.2, Eq. 3):

    y = Re(F_seq(F_hidden(x)))                         x: [B, T, D] -> y: [B, T, D]

a 2-D discrete Fourier transform over the sequence and hidden dimensions, keeping the real part. No parameters, no
projections, no heads (``num_heads`` is accepted and unused). Complexity O(T·D·(log T + log D)) (``ops/metaformer/
fft.py``: one ``rfft2`` and the Hermitian symmetry for the other half of the columns); oracle: the same transform as
explicit DFT matrices (``ops/metaformer/naive.py``).

``norm`` (torch.fft's names) scales the transform: ``"backward"`` is the paper's unscaled DFT, which FNet follows
by a post-LN residual block; in this library's pre-norm blocks (``x + mixer(norm(x))``) an unscaled output grows
as sqrt(T·D) and swamps the residual stream, so the default is ``"ortho"`` (1/sqrt(T·D): Re of a unitary map, whose
output is no larger than its input in norm). The choice is a constant factor, not another algorithm.

Non-causal only: every output mixes every position. Padding is refused (``key_padding_mask`` raises ValueError):
the FFT length is T, so zeroing padded tokens does not give the unpadded run's outputs (those use a T'-point DFT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..ops.metaformer import fft, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class FNetConfig(MixerConfig):
    """Options of ``fnet``.

    Attributes:
        norm: scale of the 2-D DFT over the T·D points, as torch.fft names it: ``"ortho"`` (1/sqrt(T·D), default),
            ``"backward"`` (1, the paper), ``"forward"`` (1/(T·D)).

    Raises:
        ValueError: ``norm`` not one of those (named in the message).
    """

    norm: str = "ortho"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in naive.FFT_NORMS:
            raise ValueError(f"norm must be one of {naive.FFT_NORMS}, got {self.norm!r}")


@MIXERS.register("fnet")
class FNet(Mixer):
    """FNet's Fourier sublayer (Lee-Thorp et al. 2022, Eq. 3): x ``[B, T, D]`` -> Re(FFT2(x)) ``[B, T, D]``, same
    dtype as x (half precision is transformed in float32). Parameter-free."""

    config_class = FNetConfig
    capabilities = Capabilities(exact=False, causal=False, padding_mask=False, decode=False,
                                complexity="T·D·(log T + log D)", time_exponent=1, log_exponent=1)
    example_options: dict = {}
    residual_projections: tuple[str, ...] = ()

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return fft.fourier_mix(x, norm=self.config.norm)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return naive.fourier_mix(x, norm=self.config.norm)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs with the usual FFT count (5·N·log2 N for an N-point complex FFT, half that for a real
        one): T real FFTs over D, then D/2 + 1 complex FFTs over T, plus the copy of the mirrored half (free):
        B·(2.5·T·D·log2 D + 5·(D/2 + 1)·T·log2 T)."""
        t, d = seq_len, self.config.dim
        return float(batch * (2.5 * t * d * math.log2(max(d, 2)) + 5.0 * (d // 2 + 1) * t * math.log2(max(t, 2))))
