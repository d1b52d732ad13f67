"""BitLinear b1.58: ternary weights and 8-bit activations, trained from scratch with the straight-through estimator.

Sources: Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits" (arXiv 2402.17764,
Eq. 1-3: absmean ternary weights); Wang et al. 2023, "BitNet: Scaling 1-bit Transformers for Large Language Models"
(arXiv 2310.11453, Sec. 2.1: absmax activation quantisation, the norm before it, the STE); the training recipe of
microsoft/unilm's "The-Era-of-1-bit-LLMs__Training_Tips_Code_FAQ" as recorded in
``../shared/notes/compression_distributed.md`` part A3. The maths, for ``W [out, in]`` and ``x [..., in]``:

* weights, per tensor (absmean): ``γ = mean_ij |W_ij|``, ``W̃ = RoundClip(W / (γ + ε), −1, 1) ∈ {−1, 0, 1}``,
  dequantised ``γ · W̃`` (``absmean_ternary``);
* activations, per token (absmax, 8 bits, no zero point): ``s = Q_b / max(max_i |x_i|, ε)`` with ``Q_b = 127``,
  ``x̃ = Clip(round(x · s), −128, 127)``, dequantised ``x̃ / s`` (``absmax_int8``; |x · s| <= 127, so the clip only
  guards rounding);
* the norm inside the layer, before the activation quantisation: ``x_norm = x / sqrt(mean_i x_i² + ε)``, an RMSNorm
  without a learnable gain, as the FAQ's ``RMSNorm(x)`` call (so BitLinear holds exactly the parameters of an
  ``nn.Linear``: a gain in front of ternary weights would be a float per-input scale the packed export must keep);
* the straight-through estimator: ``x + (q(x) − x).detach()``, whose value is ``q(x)`` and whose gradient is the
  identity (``ste``); both quantisers use it, so the latent float weight gets the gradient of the ternary one.

``y = F.linear(ste(x_norm, x̃/s), ste(W, γ·W̃), b)``: the bias (when the layer has one; BitNet's LLaMA-like blocks
have none) stays float and is added after the product. ``ε = 1e-5`` everywhere (the FAQ's clamp).

For export, ``pack_ternary`` stores ``W̃`` in 2 bits per value, 4 per byte; ``unpack_ternary`` is the oracle of the
256-entry table that ``compress/bitnet.py``'s ``PackedBitLinear`` unpacks with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.amp import no_autocast

#: ε of the norm and of both quantisers (the FAQ's ``clamp_(min=1e-5)``)
EPS = 1e-5
#: Q_b: the largest magnitude of an 8-bit activation (b = 8: 2^(b-1) − 1)
QB = 127


def rms_norm(x: Tensor, eps: float = EPS) -> Tensor:
    """``x [..., D] -> x / sqrt(mean(x², -1) + eps)`` (same shape and dtype), RMSNorm without a gain."""
    # the mean square from the 2-norm: one reduction and no [..., D] temporary for x² (fresh activation-sized
    # buffers page-fault on these CPUs and cost more than the arithmetic)
    mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / x.shape[-1]
    return x * torch.rsqrt(mean_square + eps)


def absmean_ternary(w: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """b1.58's weight quantiser (Ma et al. 2024, Eq. 1-3): ``w [...]`` (float) -> ``(W̃, γ)`` with ``W̃`` the ternary
    values {−1, 0, 1} in ``w``'s dtype and shape, ``γ = mean|w|`` a 0-dim tensor; ``w ≈ γ · W̃``.

    Raises:
        ValueError: ``w`` empty or not floating point."""
    if not w.is_floating_point() or w.numel() == 0:
        raise ValueError(f"w must be a non-empty float tensor, got {w.dtype} of shape {tuple(w.shape)}")
    gamma = w.abs().mean()
    return (w / (gamma + eps)).round().clamp(-1, 1), gamma


def absmax_int8(x: Tensor, eps: float = EPS, *, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Per-token absmax 8-bit quantiser (Wang et al. 2023, Sec. 2.1; Ma et al. 2024): ``x [..., D]`` (float) ->
    ``(x̃ [..., D], s [..., 1])``, ``x̃`` integers in [−127, 127] held in ``x``'s dtype, ``s = 127 / max|x|`` per
    token (a token of zeros gets ``127 / eps`` and quantises to zeros); ``x ≈ x̃ / s``. Both outputs are detached
    (rounding has no gradient; ``ste`` gives the layer one). ``inplace=True`` writes ``x̃`` into ``x``'s own buffer
    (for a caller that no longer needs ``x``: one activation-sized allocation fewer).

    Raises:
        ValueError: ``x`` of rank 0 or not floating point."""
    if not x.is_floating_point() or x.dim() == 0:
        raise ValueError(f"x must be a float tensor [..., D], got {x.dtype} of shape {tuple(x.shape)}")
    x = x.detach()
    # max|x| = max(max x, −min x): exact, without an |x| temporary; then one buffer rounded and clipped in place
    peak = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg())
    scale = QB / peak.clamp_min(eps)
    q = x.mul_(scale) if inplace else x * scale
    return q.round_().clamp_(-QB - 1, QB), scale


def ste(x: Tensor, q: Tensor) -> Tensor:
    """Straight-through estimator: the value of ``q`` with the gradient of ``x`` (``x + (q − x).detach()``)."""
    return x + (q - x).detach()


class BitLinear(nn.Linear):
    """``x [..., in] -> y [..., out]``: BitLinear b1.58 (see the module docstring), trained with a latent float
    ``weight [out, in]`` that every forward ternarises.

    With gradients enabled it is the straight-through form ``F.linear(ste(x_norm, x̃/s), ste(W, γW̃), b)``; under
    ``torch.no_grad`` the integer form ``ternary_linear`` (the same value up to float rounding, ~1e-7 relative).

    A subclass of ``nn.Linear`` with the same parameters and state-dict keys, so whatever selects linear layers
    (Muon's matrices in ``train/optim.py``, ``compress``'s candidates) takes it, and ``compress``'s ``bitnet``
    packs it. Built from a model's layers by ``ModelConfig(linear="bitlinear")`` (``models/transformer.py``).
    Training and eval mode compute the same; only the gradient is straight-through.

    Raises:
        ValueError: ``x`` whose last dimension is not ``in_features``.
    """

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "BitLinear":
        """A BitLinear holding ``layer``'s own ``weight`` and ``bias`` parameters (the same objects, not copies)."""
        # built on the meta device: its own parameters are replaced at once, so nothing is allocated for them
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        new.weight = layer.weight
        new.bias = layer.bias
        return new

    def quantized_input(self, x: Tensor) -> Tensor:
        """``x [..., in]`` -> the normed, 8-bit quantised activations ``x̃ / s`` (straight-through), in float32 (or
        float64 for a float64 ``x``)."""
        # norm and scales in at least float32: a 16-bit x would round the per-token scale and the codes
        x_norm = rms_norm(x.to(torch.promote_types(x.dtype, torch.float32)))
        q, scale = absmax_int8(x_norm)
        # ste(x_norm, q / scale), with q / scale − x_norm formed in q's own buffer (one temporary fewer)
        return x_norm + q.div_(scale).sub_(x_norm.detach())

    def quantized_weight(self) -> Tensor:
        """``γ · W̃ [out, in]`` (straight-through to the latent ``weight``)."""
        ternary, gamma = absmean_ternary(self.weight)
        return ste(self.weight, gamma * ternary)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must be [..., in_features={self.in_features}], got shape {tuple(x.shape)}")
        if not torch.is_grad_enabled():
            # no gradient wanted (evaluation, sampling): the integer form, which the packed export computes too,
            # so a trained model and its export give the same numbers bit for bit
            ternary, gamma = absmean_ternary(self.weight.detach())
            return ternary_linear(x, ternary, gamma, self.bias)
        x_q = self.quantized_input(x).to(x.dtype)
        return F.linear(x_q, self.quantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def ternary_linear(x: Tensor, ternary: Tensor, gamma: Tensor, bias: Tensor | None = None) -> Tensor:
    """BitLinear's value without its gradient, from the integers: ``x [..., in]``, ``ternary [out, in]`` (values
    {−1, 0, 1}), ``gamma`` (0-dim), ``bias [out]`` or None -> ``y [..., out]`` in ``x``'s dtype,
    ``y = (x̃ W̃ᵀ) · γ / s + b`` with ``x̃, s = absmax_int8(rms_norm(x))``.

    The products of 8-bit codes and ternary weights are integers, summed exactly in float32 while ``127 · in < 2²⁴``
    (any ``in`` below 132,104), so only the final scaling rounds. Computed in float32 (float64 for a float64 ``x``)
    with autocast off: a bf16 matmul would round those integer sums to 8 significant bits. No gradient flows."""
    with torch.no_grad(), no_autocast(x.device):
        # the normed input is a fresh buffer: quantised in place
        q, scale = absmax_int8(rms_norm(x.to(torch.promote_types(x.dtype, torch.float32))), inplace=True)
        y = F.linear(q, ternary.to(q.dtype)).mul_(gamma.to(q.dtype) / scale)
        if bias is not None:
            y.add_(bias)
    return y.to(x.dtype)


def pack_ternary(ternary: Tensor) -> Tensor:
    """``ternary [...]`` (values in {−1, 0, 1}, any dtype) -> ``uint8 [ceil(n / 4)]``, n = ``ternary.numel()``:
    the values in row-major order, 2 bits each as ``t + 1`` ∈ {0, 1, 2}, value ``4k + j`` in bits ``2j, 2j+1`` of
    byte k; the last byte is padded with the code of 0.

    Raises:
        ValueError: a value outside {−1, 0, 1} (how many), or an empty tensor."""
    flat = ternary.detach().flatten()
    if flat.numel() == 0:
        raise ValueError("ternary must not be empty")
    bad = int((~((flat == -1) | (flat == 0) | (flat == 1))).sum())
    if bad:
        raise ValueError(f"ternary must hold only -1, 0 and 1; {bad} of {flat.numel()} values are not")
    codes = (flat.to(torch.int16) + 1).to(torch.uint8)
    codes = F.pad(codes, (0, -codes.numel() % 4), value=1).view(-1, 4)
    return codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)


def unpack_ternary(packed: Tensor, numel: int) -> Tensor:
    """Inverse of ``pack_ternary``: ``packed uint8 [m]`` -> ``int8 [numel]`` (values t = code − 1), written as
    shifts and masks: the oracle of the table lookup in ``PackedBitLinear``.

    Raises:
        ValueError: ``packed`` not a 1-D uint8 tensor, or ``numel`` not in (4(m − 1), 4m]."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if not 4 * (packed.numel() - 1) < numel <= 4 * packed.numel():
        raise ValueError(f"numel={numel} does not fit {packed.numel()} packed bytes (4 values per byte)")
    codes = torch.stack([(packed >> (2 * j)) & 3 for j in range(4)], dim=1)  # [m, 4]
    return (codes.flatten()[:numel].to(torch.int8) - 1)
