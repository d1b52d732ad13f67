"""``int4``: weight-only int4 quantisation (A16W4) through torchao's CPU path, ``quantize_`` with
``torchao.prototype.quantization.int4.PrototypeInt4WeightOnlyConfig`` (pytorch/ao, pinned in the ``compress``
extra; ``Int4OpaqueTensor``, whose matmul is PyTorch's own ``aten._weight_int4pack_mm_for_cpu``). torchao's stable
``Int4WeightOnlyConfig`` packing formats are GPU-only (the default needs the ``mslk`` package, ``plain_int32`` says
"does not support device 'cpu'"), so this is the prototype, and torchao may move it.

Each weight row is cut into groups of ``group_size`` inputs; a group stores 4-bit values with a float scale and zero
point (asymmetric, tinygemm's qparams): ``W ≈ s_g · (q − z_g)``. Activations stay float. A weight takes half a byte
per value plus 8 bytes per group (~7x smaller than float32 at ``group_size=128``).

Which layers can be packed: the input width must be a multiple of ``group_size`` (32, 64 or 128; torchao itself
would skip such a layer silently) and the output width a multiple of 16 (``_convert_weight_to_int4pack_cpu``); this
method refuses, naming them, any layer that is not. It refuses outright, naming the reason and the CPU capability
(``torch.backends.cpu.get_cpu_capability()``), when the packed kernel does not run on this machine.

Saved like ``int8``: the packed values and the scales/zeros as plain tensors, put back into re-quantised layers on
load. No gradient flows through the packed weights, so this method takes no fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import _torchao
from .base import COMPRESSORS, CompressConfig, Compressor

GROUP_SIZES = (32, 64, 128)
#: output widths the CPU int4 packing accepts must be multiples of this
OUT_MULTIPLE = 16


@dataclass(frozen=True)
class Int4Config(CompressConfig):
    """Attributes:
        group_size: inputs sharing one scale and zero point: 32, 64 or 128 (torchao's default 128; smaller groups
            are more accurate and store more scales).
    """

    group_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {GROUP_SIZES} (the CPU int4 kernel's groups), "
                             f"got {self.group_size!r}")


def _quantize(model: nn.Module, names: set[str], group_size: int) -> None:
    _torchao.torchao()
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    # set_inductor_config=False: no change to torch.compile's global settings as a side effect
    quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False),
              filter_fn=lambda m, fqn: fqn in names)


@COMPRESSORS.register("int4")
class Int4(Compressor):
    """Weight-only int4 quantisation of the blocks' linear layers (torchao's CPU path)."""

    config_class = Int4Config

    def check_available(self) -> None:
        """Quantise and run one small layer: torchao's CPU int4 path must work on this machine.

        Raises:
            ImportError: torchao is missing. ValueError: the kernel does not run here (reason and CPU capability)."""
        _torchao.torchao()
        probe = nn.Sequential(nn.Linear(2 * self.config.group_size, 2 * OUT_MULTIPLE))
        try:
            _quantize(probe, {"0"}, self.config.group_size)
            with torch.no_grad():
                probe(torch.randn(2, 2 * self.config.group_size))
        except Exception as e:  # any failure of the kernel or of its packing is a refusal with its reason
            raise ValueError(f"int4: torchao's CPU int4 weight-only kernel does not run on this machine (CPU "
                             f"capability {torch.backends.cpu.get_cpu_capability()}): {type(e).__name__}: {e}") from e

    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        gs = self.config.group_size
        bad = [f"{n} [{m.out_features}, {m.in_features}]" for n, m in layers.items()
               if m.in_features % gs or m.out_features % OUT_MULTIPLE]
        if bad:
            raise ValueError(f"int4 cannot pack {', '.join(bad)}: the CPU int4 kernel needs the input width to be a "
                             f"multiple of group_size={gs} and the output width a multiple of {OUT_MULTIPLE}; choose "
                             "another group_size or leave them in float with --option exclude=PATTERN")
        _quantize(model, set(layers), gs)
        return {"layers": {name: {"in": m.in_features, "out": m.out_features} for name, m in layers.items()},
                "torchao": _torchao.version()}

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        _quantize(model, set(record["layers"]), self.config.group_size)

    def describe(self, record: dict[str, Any]) -> list[str]:
        return [f"int4 weights (groups of {self.config.group_size}) in {len(record['layers'])} linear layers "
                f"(torchao {record['torchao']})"]
