"""Key/value cache for decoding with amortised O(1) appends (capacity doubles when full)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Keys and values of the tokens decoded so far.

    Attributes:
        k, v: ``[B, H_kv, capacity, d]`` storage; the first ``length`` positions are valid.
        length: number of tokens seen (also the absolute position of the next token).
        max_keep: keep only the most recent ``max_keep`` keys (sliding window); ``None`` keeps all.
        start: absolute position of the first kept key.
    """

    k: Tensor
    v: Tensor
    length: int = 0
    max_keep: int | None = None
    start: int = 0

    @classmethod
    def empty(cls, batch_size: int, num_kv_heads: int, head_dim: int, *, device: torch.device,
              dtype: torch.dtype, capacity: int = 64, max_keep: int | None = None) -> "KVCache":
        if max_keep is not None:
            capacity = 2 * max_keep  # trimming happens when full, so 2x keeps appends amortised O(1)
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype),
                   0, max_keep, 0)

    @property
    def kept(self) -> int:
        return self.length - self.start

    def append(self, k_t: Tensor, v_t: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``k_t, v_t: [B, H_kv, 1, d]``; returns views of the kept keys and values ``[B, H_kv, kept, d]``."""
        n = self.kept
        if n == self.k.shape[2]:
            if self.max_keep is not None:
                keep = self.max_keep - 1
                self.k[:, :, :keep] = self.k[:, :, n - keep:n].clone()
                self.v[:, :, :keep] = self.v[:, :, n - keep:n].clone()
                self.start += n - keep
                n = keep
            else:
                self.k = torch.cat([self.k, torch.empty_like(self.k)], dim=2)
                self.v = torch.cat([self.v, torch.empty_like(self.v)], dim=2)
        self.k[:, :, n:n + 1] = k_t.to(self.k.dtype)
        self.v[:, :, n:n + 1] = v_t.to(self.v.dtype)
        self.length += 1
        lo = 0 if self.max_keep is None else max(0, n + 1 - self.max_keep)
        return self.k[:, :, lo:n + 1], self.v[:, :, lo:n + 1]
