"""Gathered block-sparse softmax attention: the general kernel for block patterns given as key lists (HiLo's local
windows and its pooled keys use it; sliding windows, Longformer and BigBird have their own kernels, which keep the
probabilities instead of recomputing them: ``ops.local.blocked``, ``longformer``, ``bigbird_local``).

The queries are cut into ``nb = ceil(Tq / Bq)`` blocks of ``Bq`` rows. Query block n sees a fixed list of ``S`` key
positions ``key_index[n]`` (``-1`` = no key in that column), gathered into ``[B·nb, H, S, d]``, so that all blocks
and heads are one batched attention call ``[B·nb, H, Bq, S]``. The mask is a column term (empty columns, padded
keys; ``[nb, S]``) plus a ``[Bq, S]`` band shared by every block (window edges, a causal diagonal block), added per
chunk into one ``[B·n, 1, Bq, S]`` bias broadcast over the heads — never per head. Patterns whose blocks see all keys
(``key_index=None``) use a position ``rule`` instead. BigBird's pattern (``bigbird.local_pattern``) is such a list
plus a mask too.

    softmax(Q_n K_nᵀ · scale + bias_n) V_n         per block n, with K_n = K[key_index[n]]  (gather)

Exactness: each allowed (query, key) pair must appear in exactly one column of its block (the pattern builders mark
duplicates ``-1``), so the result equals the dense masked attention of ``naive.masked_attention``.

The batched attention is ``torch.nn.functional.scaled_dot_product_attention``: on CPU its fused (flash) kernel
takes the additive mask, keeps the softmax statistics in fp32 for bf16 inputs, saves only its inputs, the output and
the log-sum-exp and recomputes the probabilities in its backward — measured 2x faster than unfused matmul + softmax
on these blocks. Masked entries get a large finite negative bias (``-1e30``, exp() = 0 exactly) rather than -inf so
that a row that sees no key stays finite; such rows are then set to 0 (their gradient is 0), matching the oracle.

Memory: the gathered keys are ``S / Bq`` copies of K and V. When they would exceed ``CHECKPOINT_BYTES`` the blocks are
processed in chunks under activation checkpointing (the chunk's gather and attention are recomputed in the
backward), so the memory kept for the backward is O(B·H·Tq·d) whatever S is; time O(B·H·Tq·S·d) either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["BlockPattern", "gathered_attention"]

#: gathered K+V bytes above which a call is chunked and checkpointed (also the chunk size then)
CHECKPOINT_BYTES = 256 << 20
#: additive bias of a hidden (query, key) pair: exp(-1e30 + s - max) is exactly 0 in every float dtype used here
MASKED = -1e30

#: rule(q_pos [1, n·Bq, 1], k_pos [1, 1, Tk]) -> bool broadcastable to [1, n·Bq, Tk]; True = may attend
Rule = Callable[[Tensor, Tensor], Tensor]


@dataclass
class BlockPattern:
    """Which keys each query block sees.

    Attributes:
        block_size: query rows per block ``Bq``.
        key_index: ``[Bm, nb, S]`` long key positions per query block (``Bm`` is 1 or the batch size; ``-1`` = empty
            column), or ``None``: every block sees all ``Tk`` keys.
        band: with ``key_index``: optional ``[Bq, S]`` bool, which (row, column) pairs of *every* block may attend
            (a sliding window's band, a causal diagonal block); ``None`` = all.
        rule: with ``key_index=None``: optional position predicate (see ``Rule``); ``None`` = every key.
        q_offset: absolute position of query row 0 (keys are at positions ``0 .. Tk-1``).
    """

    block_size: int
    key_index: Tensor | None = None
    band: Tensor | None = None
    rule: Rule | None = None
    q_offset: int = 0


def _check_pattern(pattern: BlockPattern, tq: int, b: int) -> None:
    if pattern.block_size < 1:
        raise ValueError(f"block_size must be positive, got {pattern.block_size}")
    idx = pattern.key_index
    nb = -(-tq // pattern.block_size)
    if idx is not None and (idx.dim() != 3 or idx.shape[1] != nb or idx.shape[0] not in (1, b)):
        raise ValueError(f"key_index must be [1 or B, nb={nb}, S], got {tuple(idx.shape)}")
    if pattern.band is not None and (idx is None or pattern.band.shape != (pattern.block_size, idx.shape[-1])):
        raise ValueError("band must be [block_size, S] bool and needs a key_index")
    if pattern.rule is not None and idx is not None:
        raise ValueError("rule is for key_index=None patterns; use band with a key_index")


def _gathered_chunk(qb: Tensor, kt: Tensor, vt: Tensor, flat: Tensor, bias: Tensor, empty: Tensor | None,
                    scale: float) -> Tensor:
    """Blocks of one chunk. qb ``[B·n, H, Bq, d]``; kt, vt ``[B, Tk, H, d]``; flat ``[Bm, n·S]`` key positions;
    bias ``[B·n, 1, Bq, S]``; empty ``[B·n, 1, Bq, 1]`` or None -> ``[B·n, H, Bq, d]``."""
    b, _, h, d = kt.shape
    if flat.shape[0] == 1:
        kg, vg = kt.index_select(1, flat[0]), vt.index_select(1, flat[0])  # [B, n·S, H, d]
    else:
        index = flat[:, :, None, None].expand(b, flat.shape[1], h, d)
        kg, vg = torch.gather(kt, 1, index), torch.gather(vt, 1, index)
    s = bias.shape[-1]
    kg = rearrange(kg, "b (n s) h d -> (b n) h s d", s=s)  # a view: [B·n, H, S, d]
    vg = rearrange(vg, "b (n s) h d -> (b n) h s d", s=s)
    out = F.scaled_dot_product_attention(qb, kg, vg, attn_mask=bias, scale=scale)
    return out if empty is None else out.masked_fill(empty, 0.0)


def _all_keys_chunk(qc: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, empty: Tensor | None,
                    scale: float) -> Tensor:
    """Rows that see every key (up to ``bias``): qc ``[B, H, R, d]``, k, v ``[B, H, Tk, d]``."""
    out = F.scaled_dot_product_attention(qc, k, v, attn_mask=bias, scale=scale)
    return out if empty is None else out.masked_fill(empty, 0.0)


def _run(fn, use_checkpoint: bool, *args):
    return checkpoint(fn, *args, use_reentrant=False) if use_checkpoint else fn(*args)


def _segment(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern, key_padding_mask: Tensor | None,
             scale: float, budget: int) -> Tensor:
    b, h, tq, d = q.shape
    tk = k.shape[2]
    bq = pattern.block_size
    nb = -(-tq // bq)
    dev, dt = q.device, q.dtype
    zero = torch.zeros((), dtype=dt, device=dev)
    masked = torch.tensor(MASKED, dtype=dt, device=dev)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    idx = pattern.key_index
    if idx is None:
        # rows of ceil(budget / (B·H·Tk·d)) blocks at a time: the [B|1, 1, R, Tk] bias is the only temporary
        n_per = max(1, budget // max(1, b * h * bq * tk * q.element_size() * 2))
        outs = []
        for c0 in range(0, nb, n_per):
            r0, r1 = c0 * bq, min(tq, (c0 + n_per) * bq)
            allowed = None
            if pattern.rule is not None:
                q_pos = pattern.q_offset + torch.arange(r0, r1, device=dev).view(1, -1, 1)
                allowed = pattern.rule(q_pos, torch.arange(tk, device=dev).view(1, 1, tk))  # [1, R, Tk]
            if key_padding_mask is not None:
                real = key_padding_mask[:, None, :]  # [B, 1, Tk]
                allowed = real if allowed is None else allowed & real
            bias = empty = None
            if allowed is not None:
                allowed = allowed[:, None]  # [B|1, 1, R, Tk]
                bias = torch.where(allowed, zero, masked)
                e = ~allowed.any(-1, keepdim=True)
                empty = e if bool(e.any()) else None
            use_ckpt = grad and nb > n_per
            outs.append(_run(_all_keys_chunk, use_ckpt, q[:, :, r0:r1], k, v, bias, empty, scale))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    span = idx.shape[-1]
    valid = idx >= 0  # [Bm, nb, S]
    flat = idx.clamp_min(0).reshape(idx.shape[0], nb * span)
    if key_padding_mask is not None:
        real = key_padding_mask[:, flat[0]] if idx.shape[0] == 1 else torch.gather(key_padding_mask, 1, flat)
        valid = valid & real.view(b, nb, span)
    band = torch.ones(bq, span, dtype=torch.bool, device=dev) if pattern.band is None else pattern.band
    # rows that see no key at all: [Bm, nb, Bq]
    empty_all = torch.einsum("mns,as->mna", valid.to(torch.float32), band.to(torch.float32)) == 0
    any_empty = bool(empty_all.any())
    pad = nb * bq - tq
    qb = rearrange(F.pad(q, (0, 0, 0, pad)) if pad else q, "b h (n q) d -> b n h q d", q=bq)
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # [B, Tk, H, d]
    gathered_bytes = 2 * b * h * nb * span * d * q.element_size()
    n_per = nb if gathered_bytes <= budget else max(1, nb * budget // gathered_bytes)
    use_ckpt = grad and n_per < nb
    outs = []
    for c0 in range(0, nb, n_per):
        c1 = min(nb, c0 + n_per)
        n = c1 - c0
        allowed = valid[:, c0:c1, None, :] & band  # [Bm|B, n, Bq, S]
        bias = torch.where(allowed, zero, masked).expand(b, n, bq, span).reshape(b * n, 1, bq, span)
        empty = None
        if any_empty:
            empty = empty_all[:, c0:c1].expand(b, n, bq).reshape(b * n, 1, bq, 1)
        qc = rearrange(qb[:, c0:c1], "b n h q d -> (b n) h q d")
        o = _run(_gathered_chunk, use_ckpt, qc, kt, vt, flat[:, c0 * span:c1 * span], bias, empty, scale)
        outs.append(rearrange(o, "(b n) h q d -> b h (n q) d", b=b))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out[:, :, :tq] if pad else out


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern | list[tuple[int, BlockPattern]], *,
                       key_padding_mask: Tensor | None = None, scale: float | None = None,
                       checkpoint_bytes: int | None = None) -> Tensor:
    """Block-sparse softmax attention over gathered key lists (see the module docstring).

    Args:
        q: ``[B, H, Tq, d]``; k, v: ``[B, H, Tk, d]``, same dtype (float64 / float32 / bfloat16).
        pattern: the keys each query block sees, see ``BlockPattern``; or a list of ``(first_row, pattern)`` for
            consecutive row segments of q (first rows increasing from 0), each with its own pattern (its
            ``q_offset`` is absolute).
        key_padding_mask: ``[B, Tk]`` bool, True = real key.
        scale: score scale, default ``1/sqrt(d)``.
        checkpoint_bytes: gathered K+V bytes above which the blocks are chunked and checkpointed (default
            ``CHECKPOINT_BYTES``); any value gives the same result.

    Returns:
        ``[B, H, Tq, d]`` in the dtype of ``q``; differentiable in q, k, v. A query that sees no key outputs 0.

    Raises:
        ValueError: shapes, dtypes or the pattern do not fit.
    """
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q must be [B, H, Tq, d] and k, v [B, H, Tk, d], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    b, _, tq, d = q.shape
    if key_padding_mask is not None and (key_padding_mask.shape != (b, k.shape[2])
                                         or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be bool [B, Tk] = [{b}, {k.shape[2]}], got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    parts = [(0, pattern)] if isinstance(pattern, BlockPattern) else list(pattern)
    starts = [r0 for r0, _ in parts] + [tq]
    if starts[0] != 0 or any(a >= c for a, c in zip(starts, starts[1:])):
        raise ValueError(f"segment first rows must start at 0 and increase below Tq={tq}, got {starts[:-1]}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    budget = CHECKPOINT_BYTES if checkpoint_bytes is None else checkpoint_bytes
    outs = []
    for (r0, pat), r1 in zip(parts, starts[1:]):
        _check_pattern(pat, r1 - r0, b)
        outs.append(_segment(q[:, :, r0:r1], k, v, pat, key_padding_mask, scale, budget))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
