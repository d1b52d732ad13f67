"""Position-wise feed-forward networks: GELU MLP (Vaswani et al. 2017 with Hendrycks & Gimpel's GELU) and SwiGLU
(Shazeer 2020, "GLU Variants Improve Transformer", Eq. 6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

FFNS = ("gelu", "swiglu")


class GeluMLP(nn.Module):
    """``W2 · gelu(W1 x)``; x ``[..., D]`` -> ``[..., D]`` with hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class SwiGLU(nn.Module):
    """``W2 · (silu(W x) ⊙ V x)``, with W and V fused into one ``[D, 2·hidden]`` projection."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.drop(self.fc2(F.silu(gate) * value))


def make_ffn(kind: str, dim: int, hidden: int, dropout: float = 0.0) -> nn.Module:
    """Build an FFN by name (``"gelu" | "swiglu"``); ValueError naming ``ffn`` otherwise."""
    if kind == "gelu":
        return GeluMLP(dim, hidden, dropout)
    if kind == "swiglu":
        return SwiGLU(dim, hidden, dropout)
    raise ValueError(f"ffn must be one of {FFNS}, got {kind!r}")
