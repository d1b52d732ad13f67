"""Position schemes.

Absolute schemes are added to the token embeddings by the model (``learned``, ``sinusoidal``); relative ones are
applied inside attention by the mixer (``rope``, ``alibi``, ``t5``), which declares in ``Capabilities.positions``
whether it can.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ABSOLUTE = ("learned", "sinusoidal")
RELATIVE = ("rope", "alibi", "t5")
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


def t5_bucket(relative_position: Tensor, *, bidirectional: bool, num_buckets: int = 32,
              max_distance: int = 128) -> Tensor:
    """Bucket id of each relative position for T5's learned relative position bias.

    Source: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
    Transformer", Sec. 2.1 (one learned scalar per bucket and head, added to the attention logits), with the
    bucketing of the T5 reference implementation (Mesh TensorFlow ``_relative_position_bucket``; defaults 32 buckets,
    max distance 128):

    * ``bidirectional``: half of the buckets for keys before or at the query, half for keys after it
      (``n = num_buckets // 2`` each, the second half offset by ``n``); otherwise (causal) all ``n = num_buckets``
      buckets describe the past and every key after the query falls into bucket 0 with distance 0.
    * within a direction, the distance ``|p_k - p_q|`` below ``n // 2`` is its own bucket (exact offsets); larger
      distances are spaced logarithmically, ``n//2 + floor(log(dist / (n//2)) / log(max_distance / (n//2)) ·
      (n - n//2))``, and every distance from ``max_distance`` on shares the last bucket ``n - 1``. The logarithm is
      taken in float32, as in the reference, so the ids equal the reference's.

    Args:
        relative_position: int64 tensor of any shape, ``p_k - p_q`` (key position minus query position).
        bidirectional: split the buckets between the two directions (encoder) or keep only the past (decoder).
        num_buckets: total buckets; at least 2 (causal) or 4 (bidirectional), so each direction has an exact one.
        max_distance: distance from which on all keys share the last bucket; above ``n // 2``.

    Returns:
        int64 tensor of the same shape, bucket ids in ``[0, num_buckets)``.

    Raises:
        ValueError: a non-int64 input, or ``num_buckets``/``max_distance`` too small for the rule above.
    """
    if relative_position.dtype != torch.int64:
        raise ValueError(f"relative_position must be int64, got {relative_position.dtype}")
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    exact = per_direction // 2
    if exact < 1:
        raise ValueError(f"num_buckets={num_buckets} is too small: need >= {4 if bidirectional else 2} "
                         f"({'bidirectional' if bidirectional else 'causal'})")
    if max_distance <= exact:
        raise ValueError(f"max_distance={max_distance} must exceed the {exact} exact buckets of a direction")
    if bidirectional:
        base = (relative_position > 0).long() * per_direction  # keys after the query: the upper half
        distance = relative_position.abs()
    else:
        base = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)  # the future is invisible to a causal query: distance 0
    # clamp so the log never sees 0 (those entries take the exact branch anyway)
    ratio = distance.clamp(min=exact).float() / exact
    far = exact + (ratio.log() / math.log(max_distance / exact) * (per_direction - exact)).long()
    far = far.clamp(max=per_direction - 1)
    return base + torch.where(distance < exact, distance, far)


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
    Positions may also be ``[B, T]`` per sequence and fractional (floating): ToMe's merged tokens sit at the
    size-weighted mean position of their members (``models/tome.py``); their angles are computed directly, in
    float32 like the table, so integer-valued positions give the table's angles.
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
        if positions.dim() == 2:  # [B, T]: per-sequence, possibly fractional positions
            angles = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)  # [B, T, d/2]
            cos, sin = angles.cos(), angles.sin()
            cos = torch.cat([cos, cos], dim=-1)[:, None].to(x.dtype)  # [B, 1, T, d]
            sin = torch.cat([sin, sin], dim=-1)[:, None].to(x.dtype)
        else:
            cos, sin = self._cos_sin(positions, x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
