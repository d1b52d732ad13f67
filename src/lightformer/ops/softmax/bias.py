"""The additive score bias of softmax attention as a dense tensor (causal, padding, ALiBi, window, a bucketed
relative bias such as T5's), shared by the oracle and by the dense fast path (SDPA with a materialised mask).
Conventions: ``ops/softmax/naive.py``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

#: maps relative positions ``p_k - p_q`` (int64, any shape) to bucket ids (int64, same shape), e.g. a
#: ``functools.partial`` of ``nn.positions.t5_bucket``
BucketFn = Callable[[Tensor], Tensor]


def positions(tq: int, tk: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Absolute positions of the queries ``[Tq]`` and keys ``[Tk]`` under the end-aligned convention."""
    return torch.arange(tk - tq, tk, device=device), torch.arange(tk, device=device)


def dense_bias(tq: int, tk: int, *, causal: bool = False, key_padding_mask: Tensor | None = None,
               alibi_slopes: Tensor | None = None, window: tuple[int, int] | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The additive bias of the scores as one dense tensor, broadcastable to ``[B, H, Tq, Tk]``.

    Masked entries are ``-inf``. ``window=(left, right)`` keeps keys with ``-left <= p_k - p_q <= right``
    (sliding-window attention, used by ``ops/local``).
    """
    device = torch.device(device)
    pq, pk = positions(tq, tk, device)
    rel = pk[None, :] - pq[:, None]  # [Tq, Tk], key minus query
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal:
        allowed &= rel <= 0
    if window is not None:
        allowed &= (rel >= -window[0]) & (rel <= window[1])
    bias = torch.zeros(1, 1, tq, tk, dtype=dtype, device=device)
    if alibi_slopes is not None:
        bias = bias - alibi_slopes.to(dtype).view(1, -1, 1, 1) * rel.abs().to(dtype)
    allowed = allowed[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    return bias.masked_fill(~allowed, float("-inf"))


def bucketed_bias(table: Tensor, bucket: BucketFn, tq: int, tk: int) -> Tensor:
    """A learned relative position bias as a dense ``[1, H, Tq, Tk]`` tensor: ``table[bucket(p_k − p_q), h]``
    (T5, Raffel et al. 2020, Sec. 2.1), with the end-aligned positions of ``positions``.

    Args:
        table: ``[num_buckets, H]`` floating; the result has its dtype and is differentiable in it.
        bucket: relative position -> bucket id (see ``BucketFn``).
    """
    pq, pk = positions(tq, tk, table.device)
    ids = bucket(pk[None, :] - pq[:, None])  # [Tq, Tk]
    return table[ids].permute(2, 0, 1)[None]
