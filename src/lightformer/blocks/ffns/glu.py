"""GLU-variant FFNs (Shazeer 2020, "GLU Variants Improve Transformer", Eq. 6):
``FFN_act(x) = W2 · (act(x W) ⊙ x V)`` with ``act`` = Swish/SiLU (``swiglu``), GELU (``geglu``) or ReLU (``reglu``).
W and V are fused into one ``[D, 2·hidden]`` projection ``fc1`` (gate first, then value); the hidden width is 2/3 of
``int(mult · D)`` rounded to a multiple of 8, so the three matrices hold as many parameters as the two of ``mlp``
(the paper's d_ff 3072 -> 2048). No biases by default (the paper's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FFN, FFNS, FFNConfig, glu_hidden


@dataclass(frozen=True)
class GLUConfig(FFNConfig):
    bias: bool = False


class GatedFFN(FFN):
    """x ``[..., D]`` -> ``[..., D]``: ``fc2(act(gate) ⊙ value)`` with ``gate, value = fc1(x).chunk(2)``."""

    config_class = GLUConfig
    activation: ClassVar[Callable[[Tensor], Tensor]]

    def __init__(self, config: GLUConfig) -> None:
        super().__init__(config)
        hidden = self.hidden(config)
        self.fc1 = nn.Linear(config.dim, 2 * hidden, bias=config.bias)
        self.fc2 = nn.Linear(hidden, config.dim, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    @classmethod
    def hidden(cls, config: FFNConfig) -> int:
        return glu_hidden(config)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.drop(self.fc2(type(self).activation(gate) * value))


@FFNS.register("swiglu")
class SwiGLU(GatedFFN):
    """``act`` = SiLU (Swish with β = 1), Shazeer 2020 Eq. 6, FFN_SwiGLU."""

    activation = staticmethod(F.silu)


@FFNS.register("geglu")
class GeGLU(GatedFFN):
    """``act`` = GELU (exact erf form), Shazeer 2020 Eq. 6, FFN_GEGLU."""

    activation = staticmethod(F.gelu)


@FFNS.register("reglu")
class ReGLU(GatedFFN):
    """``act`` = ReLU, Shazeer 2020 Eq. 6, FFN_ReGLU."""

    activation = staticmethod(F.relu)
