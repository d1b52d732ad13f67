"""Softmax attention with persistent memory slots: the fast paths of ``naive.memory_attention``.

    a = softmax([q·M_kᵀ, q·Kᵀ + bias] / sqrt(d)),   out = a[:N] · M_v + a[N:] · V

(Sukhbaatar et al. 2019, "Augmenting Self-attention with Persistent Memory", Sec. 4.1). The N memory slots are
visible from every query; causality and padding apply to the sequence's keys only.

* ``memory_attention``: one ``scaled_dot_product_attention`` call over the keys ``[M_k; K]``. Non-causal without
  padding it needs no mask. Causal without padding (Tq = Tk) it prepends N placeholder queries, so the square
  ``is_causal`` mask of SDPA lets real query i see exactly the N slots and keys 0..i, and the fused kernel keeps
  skipping the blocks above the diagonal: at T=2048, N=256, 8 heads, d=64 (fp32 fwd+bwd, one thread) this took
  432 ms against 726 ms with a materialised ``[T, N+T]`` bool mask, and 387 ms for causal attention without
  memory (minimum of 5 runs on the shared 2-core host). The N placeholder rows cost N²/2 extra scores where the
  mask costs the T²/2 masked ones, so the route is taken when N <= T. Otherwise (N > T, padding, or queries after
  a cached prefix) the mask is materialised as a bool tensor.
* ``memory_decode``: a few queries against a long KV cache (decoding): the memory's softmax partial merged with the
  cache's split-KV partials (``split_kv``), so the cache is never copied next to the memory.

Conventions: those of ``ops/softmax/naive.py``; q ``[B, H, Tq, d]``, memory ``[H_kv, N, d]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .split_kv import finalize, merge_partials, partial_attention

__all__ = ["memory_attention", "memory_decode", "memory_mask"]


def _check(q: Tensor, k: Tensor, v: Tensor, memory_k: Tensor, memory_v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"need q [B, H, Tq, d] and k == v [B, H_kv, Tk, d], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"k has H_kv={k.shape[1]} heads, which must divide q's H={q.shape[1]}")
    if memory_k.shape != memory_v.shape or memory_k.dim() != 3 or memory_k.shape[0] != k.shape[1] \
            or memory_k.shape[2] != k.shape[3]:
        raise ValueError(f"memory_k == memory_v must be [H_kv={k.shape[1]}, N, d={k.shape[3]}], got "
                         f"{tuple(memory_k.shape)}, {tuple(memory_v.shape)}")
    if memory_k.shape[1] == 0:
        raise ValueError("memory_k has N=0 slots: persistent-memory attention needs N >= 1")


def memory_mask(tq: int, tk: int, num_memory: int, *, causal: bool, key_padding_mask: Tensor | None = None,
                device: torch.device | str = "cpu") -> Tensor:
    """Which of the keys ``[memory; sequence]`` each query may see, as a bool tensor (True = attend) broadcastable to
    ``[B, H, Tq, N + Tk]``: every memory slot, and the sequence keys allowed by ``causal`` (end-aligned queries)
    and ``key_padding_mask`` ``[B, Tk]``."""
    device = torch.device(device)
    allowed = torch.ones(tq, num_memory + tk, dtype=torch.bool, device=device)
    if causal:
        # query i sits at position tk - tq + i and sees sequence keys 0 .. tk - tq + i
        allowed[:, num_memory:] = torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)
    allowed = allowed[None, None]
    if key_padding_mask is not None:
        memory = torch.ones(key_padding_mask.shape[0], num_memory, dtype=torch.bool, device=device)
        allowed = allowed & torch.cat([memory, key_padding_mask], dim=1)[:, None, None, :]
    return allowed


def memory_attention(q: Tensor, k: Tensor, v: Tensor, memory_k: Tensor, memory_v: Tensor, *, causal: bool = False,
                     key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Attention of q over ``[memory; sequence]`` through SDPA; equals ``naive.memory_attention``.

    Args:
        q: ``[B, H, Tq, d]`` (query i at position ``Tk − Tq + i``); k, v: ``[B, H_kv, Tk, d]``, H_kv dividing H
            (grouped-query heads: query head h reads key/value head ``h // (H / H_kv)``).
        memory_k, memory_v: ``[H_kv, N, d]``, N >= 1, cast to q's dtype (16-bit under autocast).
        causal: sequence keys after a query's position are hidden from it; memory slots never are.
        key_padding_mask: ``[B, Tk]`` bool, True = real key.
        scale: default ``1/sqrt(d)``.

    Returns:
        ``[B, H, Tq, d]`` in q's dtype. Differentiable (SDPA's backward) in q, k, v and the memory.

    Raises:
        ValueError: shapes that disagree, or N = 0.
    """
    _check(q, k, v, memory_k, memory_v)
    b, h, tq, d = q.shape
    tk, n = k.shape[2], memory_k.shape[1]
    if key_padding_mask is not None and key_padding_mask.shape != (b, tk):
        raise ValueError(f"key_padding_mask must be [B, Tk] = {[b, tk]}, got {list(key_padding_mask.shape)}")
    dtype = q.dtype
    keys = torch.cat([memory_k.to(dtype).expand(b, -1, -1, -1), k.to(dtype)], dim=2)  # [B, H_kv, N+Tk, d]
    values = torch.cat([memory_v.to(dtype).expand(b, -1, -1, -1), v.to(dtype)], dim=2)
    gqa = keys.shape[1] != h
    if key_padding_mask is None and not causal:
        return F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=gqa)
    if key_padding_mask is None and tq == tk and n <= tk:
        # N placeholder queries in front make the score matrix square, where is_causal's diagonal puts real
        # query i at column N + i: it sees every memory slot and keys 0..i, and the kernel skips future blocks
        # (N²/2 wasted scores on the placeholder rows, fewer than the T²/2 masked ones a mask would compute)
        q_ext = torch.cat([q.new_zeros(b, h, n, d), q], dim=2)
        out = F.scaled_dot_product_attention(q_ext, keys, values, is_causal=True, scale=scale, enable_gqa=gqa)
        return out[:, :, n:]
    mask = memory_mask(tq, tk, n, causal=causal, key_padding_mask=key_padding_mask, device=q.device)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)


def memory_decode(q: Tensor, k: Tensor, v: Tensor, memory_k: Tensor, memory_v: Tensor, *, split_size: int = 2048,
                  scale: float | None = None) -> Tensor:
    """A few causal queries (decoding) against a KV cache and the memory, without copying the cache.

    Args:
        q: ``[B, H, Tq, d]``, the last Tq positions of the cache; k, v: ``[B, H, Tk, d]`` the cache (RoPE already
            applied; repeat grouped heads first), any float dtype (cast to q's).
        memory_k, memory_v: ``[H, N, d]``, N >= 1.
        split_size: cache keys per split-KV chunk (> 0).
        scale: default ``1/sqrt(d)``.

    Returns:
        ``[B, H, Tq, d]`` in q's dtype; equals ``naive.memory_attention(q, k, v, memory_k, memory_v, causal=True)``.
        Statistics in fp32 (fp64 for fp64 inputs), as in ``split_kv``.
    """
    _check(q, k, v, memory_k, memory_v)
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"memory_decode needs k with H={q.shape[1]} heads (repeat grouped heads), got {k.shape[1]}")
    if split_size <= 0:
        raise ValueError(f"split_size must be positive, got {split_size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    b, dtype = q.shape[0], q.dtype
    n, tk = memory_k.shape[1], k.shape[2]
    acc = partial_attention(q, memory_k.to(dtype).expand(b, -1, -1, -1), memory_v.to(dtype).expand(b, -1, -1, -1),
                            start=0, total=n, causal=False, scale=scale)  # the memory: no mask
    k, v = k.to(dtype), v.to(dtype)
    for start in range(0, tk, split_size):
        end = min(start + split_size, tk)
        chunk = partial_attention(q, k[:, :, start:end], v[:, :, start:end], start=start, total=tk, causal=True,
                                  scale=scale)
        acc = merge_partials(acc, chunk)
    return finalize(acc, dtype)
