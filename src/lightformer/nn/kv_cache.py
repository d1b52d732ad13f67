"""Key/value cache for decoding: an immutable ``State`` with amortised O(1) appends.

``append`` returns a new cache and leaves the old one valid. The tensors live in a shared, growable storage; a cache
writes its new token in place when it is the newest user of that storage (the common, linear decode), and copies
its own tokens into fresh storage first when another cache has already written past its end (a branch: beam search
or a second continuation from the same prefix). Old caches only ever read positions below their own length, which
no later in-place write touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .state import State, check_index


class _Storage:
    """``k, v: [B, H_kv, capacity, d]``; ``filled``: slots written so far (by any cache sharing this storage)."""

    def __init__(self, k: Tensor, v: Tensor, filled: int) -> None:
        self.k, self.v, self.filled = k, v, filled

    @classmethod
    def empty(cls, like: Tensor, capacity: int) -> "_Storage":
        shape = (*like.shape[:2], capacity, like.shape[-1])
        return cls(like.new_empty(shape), like.new_empty(shape), 0)


@dataclass(frozen=True)
class KVCache(State):
    """Keys and values of the tokens decoded so far.

    Attributes:
        length: tokens seen (also the absolute position of the next token).
        storage: the shared buffers; slot ``i`` holds absolute position ``start + i``.
        start: absolute position of storage slot 0.
        max_keep: keep only the most recent ``max_keep`` keys (sliding window); ``None`` keeps all.
    """

    storage: _Storage
    start: int = 0
    max_keep: int | None = None

    @classmethod
    def empty(cls, batch_size: int, num_kv_heads: int, head_dim: int, *, device: torch.device,
              dtype: torch.dtype, capacity: int = 64, max_keep: int | None = None) -> "KVCache":
        if max_keep is not None:
            capacity = 2 * max_keep  # trimming happens when full, so 2x keeps appends amortised O(1)
        like = torch.empty(batch_size, num_kv_heads, 0, head_dim, device=device, dtype=dtype)
        return cls(0, _Storage.empty(like, capacity), 0, max_keep)

    @property
    def used(self) -> int:
        """Storage slots this cache covers (kept tokens and, for a window, older ones not yet trimmed)."""
        return self.length - self.start

    @property
    def kept(self) -> int:
        return self.used if self.max_keep is None else min(self.used, self.max_keep)

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """Views of the kept keys and values ``[B, H_kv, kept, d]`` (oldest first)."""
        lo, hi = self.used - self.kept, self.used
        return self.storage.k[:, :, lo:hi], self.storage.v[:, :, lo:hi]

    def tensors(self):
        yield from self.keys_values()

    def select(self, index: Tensor) -> "KVCache":
        check_index(index)
        k, v = self.keys_values()
        index = index.to(k.device)
        return KVCache.from_keys(k.index_select(0, index), v.index_select(0, index), length=self.length,
                                 max_keep=self.max_keep)

    @classmethod
    def from_keys(cls, k: Tensor, v: Tensor, *, length: int | None = None,
                  max_keep: int | None = None) -> "KVCache":
        """A cache holding ``k, v: [B, H_kv, T, d]`` as the last T positions of ``length`` tokens (default T); a
        window cache keeps the last ``max_keep`` of them."""
        t = k.shape[2]
        length = t if length is None else length
        if max_keep is not None and t > max_keep:
            k, v, t = k[:, :, -max_keep:], v[:, :, -max_keep:], max_keep
        capacity = 2 * max_keep if max_keep is not None else max(64, 2 * t)
        storage = _Storage.empty(k, capacity)
        storage.k[:, :, :t], storage.v[:, :, :t] = k, v
        storage.filled = t
        return cls(length, storage, length - t, max_keep)

    def append(self, k_new: Tensor, v_new: Tensor) -> "KVCache":
        """The cache after ``k_new, v_new: [B, H_kv, n, d]`` (n >= 1 tokens); ``self`` is left unchanged."""
        n_new = k_new.shape[2]
        st, used = self.storage, self.used
        if st.filled != used or used + n_new > st.k.shape[2]:
            # another cache wrote past our end, or we are full: continue in fresh storage holding our kept tokens
            k, v = self.keys_values()
            keep = k.shape[2]
            if self.max_keep is not None:
                keep = min(keep, max(0, self.max_keep - n_new))
            capacity = 2 * self.max_keep if self.max_keep is not None else 2 * (keep + n_new)
            capacity = max(capacity, keep + n_new)
            st = _Storage.empty(k, capacity)
            st.k[:, :, :keep], st.v[:, :, :keep] = k[:, :, k.shape[2] - keep:], v[:, :, k.shape[2] - keep:]
            st.filled, used = keep, keep
        st.k[:, :, used:used + n_new] = k_new.to(st.k.dtype)
        st.v[:, :, used:used + n_new] = v_new.to(st.v.dtype)
        st.filled = used + n_new
        length = self.length + n_new
        return KVCache(length, st, length - st.filled, self.max_keep)
