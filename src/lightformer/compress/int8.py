"""``int8``: dynamic int8 activations with int8 weights (W8A8-dynamic), through torchao's ``quantize_`` with
``Int8DynamicActivationInt8WeightConfig`` (pytorch/ao, pinned in the ``compress`` extra; its docs'
``workflows/inference.md``; CPU-tested in its ``test_int8_tensor_cpu.py``).

Each weight ``W [out, in]`` becomes int8 values with one float32 scale per output row (symmetric, ``PerRow``):
``W ≈ s_o · q_oi``, ``s_o = max_i |W_oi| / 127``. At every call the activations are quantised the same way per
token, the product is an int8 x int8 -> int32 matmul (``torch._int_mm`` on CPU), rescaled by both scales. So a
linear weight takes 1 byte per value plus 4 per row instead of 4 per value (~4x smaller).

Saved as its plain inner tensors (``<layer>.weight.qdata`` int8, ``.scale`` float32; ``train/checkpoint.py``);
loading re-applies the same ``quantize_`` to the listed layers of a freshly built model and then puts the stored
int8 values and scales into those tensors, so a reloaded model computes bit for bit what the saved one did.

Speed depends on the CPU's int8 instructions (VNNI, AMX): on an AVX2-only host ``torch._int_mm`` has no fast kernel
and the int8 layers run far slower than float32 (see the README's compression section); measure before choosing.
The quantised layers carry no gradient, so this method takes no fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from . import _torchao
from .base import COMPRESSORS, CompressConfig, Compressor


@dataclass(frozen=True)
class Int8Config(CompressConfig):
    """No options beyond ``exclude``: torchao's defaults (symmetric per-token activations, per-row weights)."""


def _quantize(model: nn.Module, names: set[str]) -> None:
    _torchao.torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    # set_inductor_config=False: no change to torch.compile's global settings as a side effect
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
              filter_fn=lambda m, fqn: fqn in names)


@COMPRESSORS.register("int8")
class Int8(Compressor):
    """W8A8-dynamic quantisation of the blocks' linear layers (torchao)."""

    config_class = Int8Config

    def check_available(self) -> None:
        _torchao.torchao()

    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        _quantize(model, set(layers))
        return {"layers": {name: {"in": m.in_features, "out": m.out_features} for name, m in layers.items()},
                "torchao": _torchao.version()}

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        _quantize(model, set(record["layers"]))

    def describe(self, record: dict[str, Any]) -> list[str]:
        return [f"int8 weights and per-token int8 activations in {len(record['layers'])} linear layers "
                f"(torchao {record['torchao']})"]
