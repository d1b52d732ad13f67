"""``svd``: low-rank factorisation of the blocks' linear layers by truncated SVD, the rank of each chosen by the
spectral energy it keeps, with an optional short fine-tune.

``W [out, in] = U Σ Vᵀ``; the rank-r truncation ``W_r = U_r Σ_r V_rᵀ`` is the best rank-r approximation in the
Frobenius norm (Eckart–Young), with relative squared error ``1 − Σ_{i≤r} σ_i² / Σ_i σ_i²``. Each layer gets the
smallest r whose retained energy ``Σ_{i≤r} σ_i² / Σ_i σ_i²`` reaches ``energy``, and becomes two layers,
``x -> B (A x) + b`` with ``A = Σ_r^½ V_rᵀ [r, in]`` and ``B = U_r Σ_r^½ [out, r]`` (the bias stays on the second,
as Greenformer's ``auto_fact`` does; splitting Σ evenly keeps both factors on one scale for the fine-tune).

A layer is left dense where factorising would not save parameters, ``r·(in + out) >= in·out`` (the break-even rank
of Greenformer: Cahyawijaya 2021, "Greenformers: Improving Computation and Memory Efficiency in Transformer Models
via Low-Rank Approximation", arXiv 2108.10808; SamuelCahyawijaya/greenformer ``auto_fact``). A freshly initialised
layer has a flat spectrum and rarely passes; trained layers concentrate their energy and do.

Fine-tune (``finetune_steps > 0``): the trainer runs that many steps of the checkpoint's own task on the factorised
model (its optimizer and schedule, learning rate ``finetune_lr`` or the run's final ``min_lr``), as Greenformer and
PELA (Guo et al. 2024) recover the accuracy that truncation costs.

The factorised layer is a ``LowRankLinear`` holding two ``nn.Linear`` (``first``, ``second``), so Muon and
anything else that looks for ``nn.Linear`` in the blocks still finds the weight matrices. Loading rebuilds each
recorded layer at its recorded rank before the weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import COMPRESSORS, CompressConfig, Compressor, replace_module


class LowRankLinear(nn.Module):
    """``x [..., in] -> second(first(x)) [..., out]``: a rank-``rank`` factorised linear layer,
    ``rank·(in + out)`` weights (+ ``out`` bias) instead of ``in·out``."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool) -> None:
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, min(in, out) = {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    @classmethod
    @torch.no_grad()
    def from_factors(cls, first: Tensor, second: Tensor, bias: Tensor | None) -> "LowRankLinear":
        """From ``first [r, in]``, ``second [out, r]`` and the bias ``[out]`` (or None)."""
        layer = cls(first.shape[1], second.shape[0], first.shape[0], bias=bias is not None)
        layer.first.weight.copy_(first)
        layer.second.weight.copy_(second)
        if bias is not None:
            layer.second.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest r with ``Σ_{i≤r} σ_i² >= energy · Σ_i σ_i²`` (``singular_values`` sorted descending); 1 for a zero
    matrix."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(power, 0) / total
    # the last entry is 1 up to rounding; the clamp keeps r <= len when energy is 1.0
    return min(int(torch.searchsorted(kept, torch.tensor([energy], dtype=kept.dtype))[0]) + 1, len(power))


def saves_parameters(rank: int, in_features: int, out_features: int) -> bool:
    """Whether a rank-``rank`` factorisation has fewer weights than the dense layer: r·(in+out) < in·out."""
    return rank * (in_features + out_features) < in_features * out_features


@torch.no_grad()
def factorise(layer: nn.Linear, energy: float) -> tuple[LowRankLinear | None, dict[str, Any]]:
    """The factorised layer keeping ``energy`` of ``layer.weight``'s spectrum (None where it would not save
    parameters), and its record: rank, retained energy and the break-even rank."""
    w = layer.weight.detach()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # float64: small singular values stay exact
    r = energy_rank(s, energy)
    info = {"in": layer.in_features, "out": layer.out_features, "rank": r, "bias": layer.bias is not None,
            "energy": float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300)),
            "break_even": layer.in_features * layer.out_features / (layer.in_features + layer.out_features)}
    if not saves_parameters(r, layer.in_features, layer.out_features):
        return None, info
    root = s[:r].sqrt()
    first = (root[:, None] * vh[:r]).to(w.dtype)  # Σ_r^½ V_rᵀ  [r, in]
    second = (u[:, :r] * root[None, :]).to(w.dtype)  # U_r Σ_r^½  [out, r]
    bias = None if layer.bias is None else layer.bias.detach()
    return LowRankLinear.from_factors(first, second, bias), info


@dataclass(frozen=True)
class SVDConfig(CompressConfig):
    """Attributes:
        energy: fraction of each weight's squared singular values to keep, in (0, 1] (e.g. 0.9).
        finetune_steps: trainer steps on the checkpoint's task after factorising (0 = none).
        finetune_lr: the fine-tune's peak learning rate (None = the run's ``min_lr``, where its schedule ended).
    """

    energy: float = 0.9
    finetune_steps: int = 0
    finetune_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.energy, bool) or not isinstance(self.energy, (int, float)) or not 0 < self.energy <= 1:
            raise ValueError(f"energy must be a fraction in (0, 1], got {self.energy!r}")
        if isinstance(self.finetune_steps, bool) or not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be an int >= 0, got {self.finetune_steps!r}")
        if self.finetune_lr is not None and (isinstance(self.finetune_lr, bool) or
                                             not isinstance(self.finetune_lr, (int, float)) or self.finetune_lr <= 0):
            raise ValueError(f"finetune_lr must be a positive number or None, got {self.finetune_lr!r}")


@COMPRESSORS.register("svd")
class SVD(Compressor):
    """Truncated-SVD factorisation of the blocks' linear layers by retained spectral energy (Greenformers' skip rule)."""

    config_class = SVDConfig
    trainable = True

    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        factorised: dict[str, Any] = {}
        kept: dict[str, Any] = {}
        for name, layer in layers.items():
            new, info = factorise(layer, float(self.config.energy))
            if new is None:
                kept[name] = info
                continue
            replace_module(model, name, new.to(device=layer.weight.device))
            factorised[name] = info
        if not factorised:
            worst = ", ".join(f"{n} needs rank {v['rank']} > {v['break_even']:.1f}" for n, v in list(kept.items())[:4])
            raise ValueError(f"svd: at energy={self.config.energy} no layer would save parameters (rank·(in+out) >= "
                             f"in·out for all {len(kept)}: {worst}); lower energy")
        return {"layers": factorised, "dense": kept}

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        for name, info in record["layers"].items():
            replace_module(model, name, LowRankLinear(info["in"], info["out"], info["rank"], bias=info["bias"]))

    def describe(self, record: dict[str, Any]) -> list[str]:
        ranks = ", ".join(f"{n.removeprefix('backbone.blocks.')}: {v['rank']}/{min(v['in'], v['out'])}"
                          for n, v in record["layers"].items())
        return [f"factorised {len(record['layers'])} linear layers (rank/full: {ranks}); "
                f"{len(record['dense'])} left dense (factorising would not save parameters)"]
