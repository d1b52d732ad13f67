"""Position schemes.

Absolute schemes are added to the token embeddings by the model (``learned``, ``sinusoidal``); relative ones are
applied inside attention by the mixer (``rope``, ``alibi``), which declares in ``Capabilities.positions`` whether
it can.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ABSOLUTE = ("learned", "sinusoidal")
RELATIVE = ("rope", "alibi")
SCHEMES = ("none", *ABSOLUTE, *RELATIVE)


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """Fixed sinusoidal embeddings ``[length, dim]`` (Vaswani et al. 2017, Sec. 3.5):
    PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(p / base^(2i/dim))."""
    if dim % 2:
        raise ValueError(f"dim must be even for sinusoidal positions, got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table.float()


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes ``[H]`` (Press et al. 2022, "Train Short, Test Long", Sec. 3): the geometric
    sequence 2^(-8/n), 2^(-16/n), ... for n = H a power of two; otherwise the slopes of the nearest lower power of
    two followed by every other slope of the next power (the paper's recipe for other head counts)."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        slopes = power_of_two(num_heads)
    else:
        lower = 2 ** int(math.floor(math.log2(num_heads)))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


class Rotary(nn.Module):
    """Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", Eq. 34), rotate-half layout.

    Rotates channel pairs (i, i + d/2) of q and k by angle ``p · base^(-2i/d)``, so that q·k depends only on the
    relative position. ``forward(x, positions)``: x ``[B, H, T, d]``, positions ``[T]`` int -> same shape/dtype.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rope, got {head_dim}")
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv.float(), persistent=False)
        self._cache: tuple[int, Tensor, Tensor] | None = None

    def _cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        n = int(positions.max()) + 1 if positions.numel() else 1
        if self._cache is None or self._cache[0] < n or self._cache[1].device != positions.device:
            n = max(n, 2 * (self._cache[0] if self._cache else 0), 256)
            angles = torch.arange(n, device=positions.device, dtype=torch.float32)[:, None] * self.inv_freq.to(
                positions.device)[None]
            angles = torch.cat([angles, angles], dim=-1)  # [n, d]
            self._cache = (n, angles.cos(), angles.sin())
        _, cos, sin = self._cache
        return cos[positions].to(dtype), sin[positions].to(dtype)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        cos, sin = self._cos_sin(positions, x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
