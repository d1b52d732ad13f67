"""``mlp``: the Transformer's position-wise FFN (Vaswani et al. 2017, Eq. 2) with the GELU activation (Hendrycks &
Gimpel 2016) of GPT/BERT: ``W2 · gelu(W1 x + b1) + b2``. Registered as ``gelu`` before the FFN registry existed;
``ModelConfig`` still reads that name as ``mlp``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FFN, FFNS, FFNConfig


@FFNS.register("mlp")
class MLP(FFN):
    """x ``[..., D]`` -> ``[..., D]``; hidden width ``int(mult · D)``; ``fc1``/``fc2`` as in every saved model."""

    config_class = FFNConfig

    def __init__(self, config: FFNConfig) -> None:
        super().__init__(config)
        hidden = self.hidden(config)
        self.fc1 = nn.Linear(config.dim, hidden, bias=config.bias)
        self.fc2 = nn.Linear(hidden, config.dim, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))
