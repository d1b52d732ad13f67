"""``magnitude_prune``: unstructured global magnitude pruning of the blocks' linear weights, with PyTorch's
``torch.nn.utils.prune.global_unstructured`` (``L1Unstructured``), made permanent with ``prune.remove``.

The ``amount`` fraction of all those weights with the smallest |w|, ranked across every layer together (global, not
per layer: layers whose weights matter less lose more), is set to zero. Han, Pool, Tran, Dally 2015, "Learning both
Weights and Connections for Efficient Neural Networks", is the classic form; Zhu & Gupta 2017 ("To prune, or not to
prune") and Blalock et al. 2020 ("What is the state of neural network pruning?") use global magnitude pruning as
the baseline.

Tensors keep their shape: the zeros are stored and multiplied like any other value, so the file and the time per
call do not shrink (PyTorch has no fast unstructured-sparse matmul on CPU; torchao's sparsity notes put the
break-even above 98 % sparsity). The method reports quality and sparsity only, and claims no speed. Nothing is
swapped, so a layer whose weight its owner reads directly is pruned like any other, and loading needs no rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from .base import COMPRESSORS, CompressConfig, Compressor


@dataclass(frozen=True)
class MagnitudePruneConfig(CompressConfig):
    """Attributes:
        amount: fraction of the blocks' linear weights set to zero, in (0, 1).
    """

    amount: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)) or not 0 < self.amount < 1:
            raise ValueError(f"amount must be a fraction in (0, 1), got {self.amount!r}")


@COMPRESSORS.register("magnitude_prune")
class MagnitudePrune(Compressor):
    """Global unstructured magnitude pruning (``torch.nn.utils.prune``) of the blocks' linear weights."""

    config_class = MagnitudePruneConfig
    replaces_layers = False

    @torch.no_grad()
    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        params = [(m, "weight") for m in layers.values()]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(self.config.amount))
        for module, name in params:
            prune.remove(module, name)  # weight = weight_orig * mask, as a plain parameter again; hooks gone
        per_layer = {n: {"zeros": int((m.weight == 0).sum()), "size": m.weight.numel()} for n, m in layers.items()}
        zeros = sum(v["zeros"] for v in per_layer.values())
        size = sum(v["size"] for v in per_layer.values())
        return {"layers": per_layer, "sparsity": zeros / size, "zeros": zeros, "size": size}

    def describe(self, record: dict[str, Any]) -> list[str]:
        return [f"sparsity {100 * record['sparsity']:.1f} % of the weights of {len(record['layers'])} linear layers "
                f"({record['zeros']:,} of {record['size']:,} are zero; stored dense, no speed-up claimed)"]
