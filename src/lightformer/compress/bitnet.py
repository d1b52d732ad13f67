"""``bitnet``: export of a BitNet b1.58 model (trained with ``--model.linear=bitlinear``) as packed 2-bit ternary
weights, with a CPU inference path that runs from the packed form.

Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits" (arXiv 2402.17764); the layer
and its maths are ``nn/bitlinear.py``'s ``BitLinear``. Each trained ``BitLinear`` of the blocks becomes a
``PackedBitLinear``: its ternary weights ``W̃ = RoundClip(W / (γ + ε), −1, 1)`` packed 4 per byte
(``pack_ternary``: 2 bits each, row-major) plus one float32 scale ``γ = mean|W|`` per layer, and its float bias
(if any). A weight of ``out·in`` values takes ``ceil(out·in / 4)`` bytes + 4, against ``4·out·in`` in float32:
1/16 of the bytes (plus the scale).

``PackedBitLinear.forward`` computes from the packed bytes what the trained ``BitLinear`` computes without
gradients: it unpacks ``W̃`` through a 256-entry table (one gather per call; the shifts-and-masks ``unpack_ternary``
is its oracle) and calls ``nn/bitlinear.py``'s ``ternary_linear``: the normed input quantised per token to integers
``x̃`` with scales ``s``, ``(x̃ W̃ᵀ) · γ / s + b``, the integer product exact in float32. So the export equals the
BitLinear model under ``torch.no_grad`` bit for bit, and its straight-through training form
``F.linear(ste(x_norm, x̃ / s), ste(W, γ W̃))`` to float rounding (~1e-7 relative per layer; through a deep model a
rounding can move an 8-bit code by one step, as any change of the input can). The unpacked ``W̃`` is a transient
float32 tensor of each call: the model keeps only the packed bytes.

Only a model trained with BitLinear layers is exported. A plain ``nn.Linear`` model is refused: ternarising
float-trained weights after the fact is not b1.58 (its weights never learned to live on {−γ, 0, γ}); train with
``--model.linear=bitlinear``. The packed layers carry no gradient, so this method takes no fine-tune (fine-tune the
BitLinear model itself, then export).

Saved as plain tensors (``<layer>.weight_packed`` uint8, ``<layer>.weight_scale`` float32, ``<layer>.bias``);
loading builds the BitLinear model from its config and puts an empty ``PackedBitLinear`` of the recorded shape at
each recorded layer before the weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.bitlinear import BitLinear, absmean_ternary, pack_ternary, ternary_linear, unpack_ternary
from .base import COMPRESSORS, CompressConfig, Compressor, replace_module


def _code_table() -> Tensor:
    """``[256, 4]`` float32: the four ternary values each byte holds (built by the oracle ``unpack_ternary``)."""
    return unpack_ternary(torch.arange(256, dtype=torch.uint8), 4 * 256).view(256, 4).float()


class PackedBitLinear(nn.Module):
    """``x [..., in] -> y [..., out]`` from packed ternary weights: the inference form of a trained ``BitLinear``.

    Attributes:
        weight_packed: ``uint8 [ceil(out·in / 4)]``, ``W̃ [out, in]`` row-major, 2 bits per value (``pack_ternary``).
        weight_scale: float32 0-dim, ``γ = mean|W|`` of the latent weight.
        bias: float ``[out]`` or None.

    Both packed tensors are parameters without gradient, so sizes counted over parameters see them.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        numel = in_features * out_features
        self.weight_packed = nn.Parameter(torch.full(((numel + 3) // 4,), 0b01010101, dtype=torch.uint8),
                                          requires_grad=False)  # all codes 1: W̃ = 0
        self.weight_scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("codes", _code_table(), persistent=False)

    @classmethod
    @torch.no_grad()
    def from_bitlinear(cls, layer: BitLinear) -> "PackedBitLinear":
        """Pack ``layer``'s ternarised weight (``absmean_ternary`` of its latent weight) and keep its bias."""
        ternary, gamma = absmean_ternary(layer.weight.detach().float())
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
        new.weight_packed.copy_(pack_ternary(ternary))
        new.weight_scale.copy_(gamma)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        return new.to(device=layer.weight.device)

    def ternary_weight(self) -> Tensor:
        """``W̃ [out, in]`` float32 in {−1, 0, 1}, unpacked by the table (one gather)."""
        values = self.codes.index_select(0, self.weight_packed.int())  # [ceil(n/4), 4]
        return values.flatten()[:self.in_features * self.out_features].view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must be [..., in_features={self.in_features}], got shape {tuple(x.shape)}")
        return ternary_linear(x, self.ternary_weight(), self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@dataclass(frozen=True)
class BitNetConfig(CompressConfig):
    """No options beyond ``exclude`` (an excluded layer stays a training-form ``BitLinear``, computing the same)."""


@COMPRESSORS.register("bitnet")
class BitNet(Compressor):
    """Packed 2-bit export of the blocks' BitLinear layers (BitNet b1.58)."""

    config_class = BitNetConfig

    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        """Raises:
            ValueError: a layer that is a plain ``nn.Linear`` (a model not trained with ``linear='bitlinear'``)."""
        plain = [n for n, m in layers.items() if not isinstance(m, BitLinear)]
        if plain:
            trained = getattr(getattr(model, "config", None), "linear", "?")
            shown = ", ".join(plain[:4]) + (f" and {len(plain) - 4} more" if len(plain) > 4 else "")
            raise ValueError(f"bitnet packs the ternary weights of a model trained with BitLinear layers, but {shown} "
                             f"are plain nn.Linear (the checkpoint was trained with model.linear={trained!r}). "
                             "Ternarising float-trained weights after training is not BitNet b1.58: train the model "
                             "with --model.linear=bitlinear")
        record = {}
        for name, layer in layers.items():
            packed = PackedBitLinear.from_bitlinear(layer)
            ternary = packed.ternary_weight()
            record[name] = {"in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None,
                            "zeros": float((ternary == 0).float().mean()), "scale": float(packed.weight_scale)}
            replace_module(model, name, packed)
        return {"layers": record}

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        for name, info in record["layers"].items():
            replace_module(model, name, PackedBitLinear(info["in"], info["out"], bias=info["bias"]))

    def describe(self, record: dict[str, Any]) -> list[str]:
        layers = record["layers"].values()
        values = sum(v["in"] * v["out"] for v in layers)
        packed = sum((v["in"] * v["out"] + 3) // 4 + 4 for v in layers)
        zeros = sum(v["zeros"] * v["in"] * v["out"] for v in layers) / values
        return [f"ternary weights of {len(record['layers'])} BitLinear layers packed 4 per byte: {packed:,} bytes "
                f"(with their scales) for {values:,} weights, {4 * values / packed:.1f}x fewer than float32; "
                f"{100 * zeros:.1f} % of them are 0"]
