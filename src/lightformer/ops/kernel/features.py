"""Feature maps φ of kernel attention, sim(q, k) = φ(q)ᵀφ(k) (Katharopoulos et al. 2020, Eq. 3-4).

Every map here is token-local (row t of φ(x) depends only on row t of x), which is what lets ``chunked`` recompute
features chunk by chunk in the backward pass instead of storing ``[T, m]`` tensors.

* ``elu_plus_one``: φ(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, "Transformers are RNNs", Eq. 7).
* ``relu``: φ(x) = max(x, 0) (SLAB, Guo et al. 2024, Sec. 3.2); a row may be all zero.
* ``favor_plus``: positive random features of FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with
  Performers", Lemma 1):  SM(x, y) = exp(xᵀy) = E_ω[exp(ωᵀx − |x|²/2) · exp(ωᵀy − |y|²/2)],  ω ~ N(0, I_d), so
  φ(x) = exp(Wx − |x|²/2) / sqrt(m) with the m rows of W drawn by ``orthogonal_gaussian`` (Sec. 2.4, ORF).

Shapes: x ``[..., d]`` -> φ ``[..., m]`` (m = d for elu/relu). Feature maps compute in the dtype they are given;
``chunked`` hands them float32 (float64 for float64 inputs) because exp amplifies bf16's rounding of its argument.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..softmax.inplace import softmax_, softmax_backward_

def elu_plus_one(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1, strictly positive (Katharopoulos et al. 2020, Eq. 7). ``[..., d] -> [..., d]``."""
    return F.elu(x) + 1.0


def relu(x: Tensor) -> Tensor:
    """φ(x) = max(x, 0) (SLAB, Guo et al. 2024, Sec. 3.2). ``[..., d] -> [..., d]``; may be all zero."""
    return F.relu(x)


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator) -> Tensor:
    """Random projection ``W: [m, d]`` (float32) for FAVOR+ (Choromanski et al. 2021, Sec. 2.4 "orthogonal random
    features"): blocks of d rows made exactly orthogonal by a QR decomposition of a Gaussian matrix, each row then
    rescaled by the norm of an independent N(0, I_d) vector (chi-distributed with d degrees of freedom), so every
    row is marginally N(0, I_d) — the estimator of Lemma 1 stays unbiased — while orthogonality lowers its variance
    (Theorem 2). The last block is truncated to reach m rows.

    Drawn in float64 on the CPU from ``generator`` (so a seeded generator gives the same W everywhere)."""
    if num_features <= 0 or dim <= 0:
        raise ValueError(f"num_features and dim must be positive, got {num_features}, {dim}")
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        # sign fix makes Q Haar-distributed (QR alone is not unique up to column signs)
        q = q * torch.sign(torch.diagonal(r))[None, :]
        blocks.append(q.T)  # rows orthonormal
    w = torch.cat(blocks, dim=0)[:num_features]  # [m, d]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)  # chi_d
    return (w * norms[:, None]).float()


def favor_key_shift(projection: Tensor, limit: float = 40.0) -> float:
    """A constant subtracted from every key feature's exponent so that none can overflow.

    ωᵀx − |x|²/2 = |ω|²/2 − |x − ω|²/2 <= |ω|²/2, so the key exponent is bounded by ``max_i |ω_i|²/2`` whatever the
    input; shifting by ``max(0, that − limit)`` keeps every key feature <= e^limit. A constant factor on all key
    features cancels in the attention ratio (it only rescales the eps of the denominator), and it depends on W
    alone, not on the data, so causality, padding and decoding are unaffected."""
    return max(0.0, float(projection.double().square().sum(-1).max()) / 2.0 - limit)


def favor_plus(x: Tensor, projection: Tensor, *, is_query: bool, key_shift: float = 0.0,
               scale: float = 1.0, out: Tensor | None = None) -> Tensor:
    """Positive random features φ(x') ∝ exp(Wx' − |x'|²/2) / sqrt(m) of x' = scale·x (Lemma 1), stabilised.

    Args:
        x: ``[..., d]``; with ``scale = d^(-1/4)``, φ(q')ᵀφ(k') estimates exp(qᵀk / sqrt(d)) up to a per-query
            factor (below).
        projection: ``W: [m, d]`` from ``orthogonal_gaussian``.
        is_query: queries are multiplied by a positive per-row constant: the features of a query are
            softmax(Wx') over the m features, i.e. exp(Wx' − |x'|²/2)/sqrt(m) divided by its own row sum. A
            per-query constant cancels between the numerator and the denominator of attention (only the eps of
            the denominator sees it), nothing can overflow, and softmax is one fused kernel forward and backward.
            Keys use the fixed factor exp(−``key_shift``) (see ``favor_key_shift``): a data-dependent key shift (as
            in the original implementation's global key max) would let future or padded keys change past outputs.
        out: optional ``[..., m]`` buffer to compute φ in (no autograd; for work buffers reused across groups).
    Returns:
        ``[..., m]`` in the dtype of ``x``, all entries > 0 (up to underflow).
    """
    m = projection.shape[0]
    w = projection.to(x.dtype) * scale  # [m, d]
    # [..., m], contiguous: the ops below work on it in place when they can (a fresh [L, m] output per op is a fresh
    # allocation, page-faulted at long T: docs/architecture.md)
    z = torch.matmul(x, w.T) if out is None else torch.matmul(x, w.T, out=out)
    if is_query:
        if torch.is_grad_enabled():
            return torch.softmax(z, dim=-1)
        return softmax_(z)
    # exponent Wx' − |x'|²/2 − key_shift − log sqrt(m); the per-row term is subtracted in place from the matmul
    # output (a concatenated [x, −c(x)] operand instead costs a slow 65-column cat per group)
    c = (0.5 * scale * scale) * x.square().sum(-1, keepdim=True) + (key_shift + 0.5 * math.log(m))  # [..., 1]
    return z.sub_(c).exp_()


class FavorPlus:
    """The feature map of ``favor_plus`` for a fixed projection, with its analytic input gradient (for
    ``chunked``'s backward: no autograd graph through the map, no ``neg`` pass over ``[T, m]``).

    Keys: φ = exp(z), z = x'W'ᵀ − c(x), W' = scale·W, c(x) = ½·scale²·|x|² + const, so with dz = dφ ⊙ φ:
    dx = dz·W' − scale²·(Σ_m dz)·x. Queries: φ = softmax(x W'ᵀ) over the m features, dz = φ ⊙ (dφ − Σ_m φ⊙dφ)
    (torch's fused softmax backward), dx = dz·W'.
    """

    #: ``__call__`` takes ``out=`` (chunked computes every group's features in one reused buffer)
    supports_out = True

    def __init__(self, projection: Tensor, *, key_shift: float, scale: float) -> None:
        self.projection, self.key_shift, self.scale = projection, key_shift, scale

    def __call__(self, x: Tensor, is_query: bool, out: Tensor | None = None) -> Tensor:
        return favor_plus(x, self.projection, is_query=is_query, key_shift=self.key_shift, scale=self.scale,
                          out=out)

    def grad(self, x: Tensor, phi: Tensor, dphi: Tensor, is_query: bool) -> Tensor:
        """dL/dx ``[..., d]`` from x ``[..., d]``, φ and dL/dφ ``[..., m]`` (``dphi`` is overwritten)."""
        w = self.projection.to(x.dtype) * self.scale  # [m, d]
        if is_query:
            return softmax_backward_(dphi, phi, phi.dtype) @ w
        dz = dphi.mul_(phi)
        row = dz.sum(-1, keepdim=True).mul_(self.scale * self.scale)  # [..., 1]
        return (dz @ w).sub_(x * row)
