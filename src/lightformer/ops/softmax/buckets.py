"""A bucketed relative position bias (T5, Raffel et al. 2020, Sec. 2.1) seen block by block, for the tiled kernel.

The bias of score (i, j) is ``table[bucket(p_k − p_q), h]``: it depends on the pair only through the relative
position ``r = p_k − p_q``. With ``Tq`` end-aligned queries and ``Tk`` keys (conventions of ``naive.py``) every
``r`` lies in ``[1 − Tk, Tq − 1]``, so one lookup of ``Tq + Tk − 1`` bucket ids (O(T), never ``[Tq, Tk]``) serves
every block. Inside a block whose query i sits at ``p_q = p0 + i`` and key j at ``p_k = k0 + j``, entry (i, j) has
``r = r0 + j − i`` with ``r0 = k0 − p0``.

Far from the diagonal a whole block usually falls into one bucket (T5: every distance from ``max_distance`` on);
its bias is then one scalar per head, which the kernel adds as a per-row term instead of a block pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bias import BucketFn


class RelativeBuckets:
    """Bucket ids of every relative position of one call, and their per-block views.

    Args:
        bucket: relative position -> bucket id (int64 in, int64 out, same shape).
        num_buckets: rows of the bias table; every id must lie in ``[0, num_buckets)``.
        tq, tk: query and key counts of the call.

    Raises:
        ValueError: ``bucket`` returns a wrong shape or dtype, or an id outside the table.
    """

    def __init__(self, bucket: BucketFn, num_buckets: int, tq: int, tk: int, device: torch.device) -> None:
        self.r_first = 1 - tk
        rel = torch.arange(1 - tk, tq, device=device)
        ids = bucket(rel)
        if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.shape != rel.shape:
            raise ValueError("rel_bucket must map an int64 tensor to int64 bucket ids of the same shape")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_buckets):
            raise ValueError(f"rel_bucket gave ids in [{int(ids.min())}, {int(ids.max())}], outside the table's "
                             f"{num_buckets} buckets")
        self.ids = ids  # [Tq + Tk − 1]
        n = ids.numel()
        # run_end[i]: the last index j >= i with ids[i..j] all equal, so "one bucket over [i, j]" is one lookup
        # (no assumption that the bucket function is monotone)
        ends = torch.full((n,), n - 1, dtype=torch.int64, device=device)
        if n > 1:
            step = ids[1:] != ids[:-1]
            ends[:-1] = torch.where(step, torch.arange(n - 1, device=device), ends[:-1])
        self.run_end = ends.flip(0).cummin(0).values.flip(0)
        self._constant: dict[tuple[int, int], int | None] = {}

    def constant(self, r0: int, nq: int, nk: int) -> int | None:
        """The single bucket of an ``[nq, nk]`` block with diagonal offset ``r0``, or ``None`` if it spans more.
        Cached per (first, last) relative position: blocks on one diagonal repeat in every query block."""
        first, last = r0 - (nq - 1) - self.r_first, r0 + nk - 1 - self.r_first
        key = (first, last)
        if key not in self._constant:
            self._constant[key] = int(self.ids[first]) if int(self.run_end[first]) >= last else None
        return self._constant[key]

    def block(self, r0: int, nq: int, nk: int) -> Tensor:
        """Bucket ids ``[nq, nk]`` (int64) of a block with diagonal offset ``r0``: entry (i, j) is
        ``bucket(r0 + j − i)``."""
        dev = self.ids.device
        rel = torch.arange(nk, device=dev)[None, :] - torch.arange(nq, device=dev)[:, None]
        return self.ids[rel + (r0 - self.r_first)]
