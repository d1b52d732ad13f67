"""``performer``: FAVOR+ attention (Choromanski, Likhosherstov, Dohan, Song, Gane, Sarlos, Hawkins, Davis,
Mohiuddin, Kaiser, Belanger, Colwell, Weller 2021, "Rethinking Attention with Performers", ICLR).

Softmax attention softmax(QKᵀ/sqrt(d))V is approximated by Â = φ(Q')φ(K')ᵀ with Q' = Q·d^(−1/4), K' = K·d^(−1/4)
and positive orthogonal random features (Lemma 1, Sec. 2.3-2.4):

    exp(xᵀy) = E_ω[exp(ωᵀx − |x|²/2) exp(ωᵀy − |y|²/2)],   φ(x) = exp(Wx − |x|²/2) / sqrt(m),   W: [m, d]

(rows of W orthogonal in blocks of d, chi-distributed norms; ``ops.kernel.features``), then
out = D̂⁻¹ Â V with D̂ = diag(Â 1) (Eq. 1-2 with the kernel estimate), computed as φ(Q')(φ(K')ᵀV) in O(T·m·d)
(non-causal) and through the chunked prefix-sum form when causal (Sec. 2.6 "unidirectional": intra-chunk masked
quadratic form of ``chunk_size`` tokens, running [m, d] state across chunks; ``ops.kernel.chunked``). Decoding is
the recurrence S += φ(k)vᵀ, z += φ(k) with state ``[B, H, m, d]``.

Numerical stabilisation (``features.favor_plus``): each query's features are divided by their own maximum, and
key exponents are shifted by a constant fixed by W alone; both factors cancel between numerator and denominator
(up to ``eps``, default 1e-6, added to the denominator), so the result is FAVOR+ itself, and no data-dependent
shift can let future or padded keys leak into an output.

Random features: ``projection`` ``[m, d]`` is a persistent buffer drawn at construction from a generator seeded by
the global torch RNG (so ``torch.manual_seed`` before construction fixes it, and forward, oracle and decode use the
same features). With ``redraw=True`` the features are redrawn from that generator at the start of every forward in
training mode (the paper's feature redrawing, Sec. 4); forward in eval mode, the oracle and decoding never redraw.
``redraw_features()`` redraws explicitly.

x: ``[B, T, D]`` -> ``[B, T, D]``. Complexity O(T·m·d) time; memory O(T·d + m·d) in forward and backward (features
are recomputed per chunk in the backward pass). Oracle: the explicit ``[T, T]`` form φ(Q')φ(K')ᵀ with the same
features, normalised by its row sums, causally masked (``ops.kernel.naive.kernel_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.kernel import naive
from ..ops.kernel.chunked import FeatureMap
from ..ops.kernel.features import FavorPlus, favor_key_shift, orthogonal_gaussian
from .base import MIXERS, Capabilities
from .linear import KernelAttentionMixer, LinearAttentionConfig


@dataclass(frozen=True)
class PerformerConfig(LinearAttentionConfig):
    """Attributes:
        num_features: m, the number of random features per head (the paper uses m = 256 in most experiments).
        redraw: redraw the random features at every training-mode forward (eval mode never redraws).
        chunk_size: tokens per chunk of the causal form (default 128: balances the intra-chunk C²·(m + d) work
            against the m·d state products for m = 256).
    """

    num_features: int = 256
    redraw: bool = False
    chunk_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {self.num_features!r}")


@MIXERS.register("performer")
class Performer(KernelAttentionMixer):
    """FAVOR+ attention with positive orthogonal random features. x ``[B, T, D]`` -> ``[B, T, D]``; O(T·m·d)."""

    config_class = PerformerConfig
    config: PerformerConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, complexity="T·m·d",
                                prefill=True, time_exponent=1)
    example_options = {"num_features": 16, "chunk_size": 4}

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__(config)
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, device="cpu"))
        self._generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", orthogonal_gaussian(config.num_features, config.head_dim,
                                                               self._generator))  # [m, d]

    @property
    def num_features(self) -> int:
        return self.config.num_features

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new projection W from the module's generator (in place, keeping device and dtype)."""
        w = orthogonal_gaussian(self.config.num_features, self.config.head_dim, self._generator)
        self.projection.copy_(w.to(self.projection))

    def feature_map(self) -> FeatureMap:
        # scale d^(-1/4) on q and k, so that φ(q')ᵀφ(k') estimates exp(qᵀk / sqrt(d))
        w = self.projection
        return FavorPlus(w, key_shift=favor_key_shift(w), scale=self.config.head_dim ** -0.25)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        if self.training and self.config.redraw:
            self.redraw_features()
        return super()._forward(x, key_padding_mask)

    def attention_oracle(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return naive.kernel_attention(phi_q, phi_k, v, causal=self.config.causal, eps=self.config.eps,
                                      key_padding_mask=mask)
