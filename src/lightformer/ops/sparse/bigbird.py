"""BigBird block-sparse attention (ITC), fast path: O(T·block_size·(3 + num_global + num_random)·d).

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", Sec. 2 (random + window + global attention) and
App. D (the blocked implementation, ITC: internal global tokens = the first ``num_global`` blocks). Same signature
and result as ``naive.bigbird_attention``.

Computation: the global query blocks (rows ``< g·block_size``) see every key (``longformer.global_rows_attention``:
dense rows, no key lists); each other query block n sees the key blocks ``[0 .. g-1, n-1, n, n+1, random_blocks[n]]``
(causal: ``n+1`` is dropped, it is all future) under one softmax (``bigbird_local``: the global keys are shared,
the window keys zero-copy span views, only the random blocks are gathered). A window block that is also global is
masked so each key counts once; random blocks never repeat a window or global block (``random_blocks`` guarantees
it). T not a multiple of ``block_size``: the last block is partial, its missing keys are empty columns (never
truncation).

Random blocks (``random_blocks``): a deterministic choice, fixed by a seed. Each (query block n, key block m) pair gets
the priority ``hash32(seed, n, m)`` (a fixed 32-bit integer hash); block n takes the ``num_random`` candidate blocks of
lowest priority, candidates being the non-global blocks outside ``n-1 .. n+1`` (causal: only ``m < n-1``, the past)
that hold at least one real key. The choice therefore depends on the sequence length (and padding) only through
which blocks exist: a sequence and its right-padded copy see the same random blocks, and re-running a length redraws
nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bigbird_local import LocalPlan, blocks_attention
from .blocked import BlockPattern
from .longformer import global_rows_attention

_MASK32 = 0xFFFFFFFF
_NONE = 1 << 40  # priority of a non-candidate: above every 32-bit hash


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixing hash (two multiply-xorshift rounds); int64 arithmetic that never overflows."""
    x = x & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def random_blocks(seed: int, num_blocks: int, *, num_global: int, num_random: int, causal: bool,
                  block_valid: Tensor | None = None, device: torch.device | str = "cpu") -> Tensor:
    """The random key blocks of every query block, ``[Bm, num_blocks, num_random]`` long (``-1`` = none).

    Args:
        seed: the module's fixed seed.
        num_blocks: ``nb = ceil(T / block_size)``.
        block_valid: optional ``[B, nb]`` bool, blocks holding at least one real key (``Bm = B``); else ``Bm = 1``.

    Global query blocks get none (they see everything); a block with fewer candidates than ``num_random`` gets
    ``-1`` for the rest.
    """
    device = torch.device(device)
    n = torch.arange(num_blocks, device=device)[:, None]  # query block
    m = torch.arange(num_blocks, device=device)[None, :]  # key block
    cand = (m >= num_global) & (n >= num_global) & ((m < n - 1) | ((m > n + 1) & (not causal)))  # [nb, nb]
    if block_valid is not None:
        cand = cand[None] & block_valid[:, None, :]
    else:
        cand = cand[None]
    row_key = _hash32(n ^ _hash32(torch.tensor(int(seed) & _MASK32, device=device)))  # [nb, 1]: one key per row
    prio = _hash32(_hash32(m * 0x9E3779B1 + row_key) + row_key)  # [nb, nb], fixed per (seed, n, m)
    prio = torch.where(cand, prio[None], torch.full_like(prio[None], _NONE))  # [Bm, nb, nb]
    r = min(num_random, num_blocks)
    vals, order = torch.sort(prio, dim=-1, stable=True)
    picks = torch.where(vals[..., :r] < _NONE, order[..., :r], torch.full_like(order[..., :r], -1))
    if r < num_random:
        picks = torch.cat([picks, picks.new_full((*picks.shape[:2], num_random - r), -1)], dim=-1)
    return picks


def block_valid(key_padding_mask: Tensor, block_size: int) -> Tensor:
    """``[B, T]`` real-key mask -> ``[B, nb]``: blocks holding at least one real key."""
    b, t = key_padding_mask.shape
    nb = -(-t // block_size)
    pad = key_padding_mask.new_zeros(b, nb * block_size)
    pad[:, :t] = key_padding_mask
    return pad.view(b, nb, block_size).any(-1)


def local_pattern(t: int, *, block_size: int, num_global: int, random: Tensor, causal: bool,
                  device: torch.device) -> BlockPattern:
    """Query blocks ``g .. nb-1``: ``[Bm, nb - g, (3 + g + r)·block_size]`` key lists (``2 + g + r`` if causal)."""
    nb = -(-t // block_size)
    g = min(num_global, nb)
    n = torch.arange(g, nb, device=device)[:, None]  # absolute query block
    window = torch.cat([n - 1, n] if causal else [n - 1, n, n + 1], dim=1)  # [nl, 2|3]
    window = torch.where((window >= g) & (window < nb), window, torch.full_like(window, -1))  # global: held below
    bm = random.shape[0]
    blocks = torch.cat([torch.arange(g, device=device).expand(bm, nb - g, g), window.expand(bm, -1, -1),
                        random[:, g:]], dim=-1)  # [Bm, nl, nblk]
    pos = blocks[..., None] * block_size + torch.arange(block_size, device=device)  # [Bm, nl, nblk, bs]
    pos = torch.where((blocks[..., None] >= 0) & (pos < t), pos, torch.full_like(pos, -1))
    band = None
    if causal:  # only the own block (list slot g + 1) needs j <= i; every other listed block is in the past
        band = torch.ones(block_size, blocks.shape[-1], block_size, dtype=torch.bool, device=device)
        band[:, g + 1] = torch.ones(block_size, block_size, dtype=torch.bool, device=device).tril()
        band = band.flatten(1)  # [Bq, S]
    return BlockPattern(block_size=block_size, key_index=pos.flatten(2), band=band, q_offset=g * block_size)


@torch.compiler.disable  # a hand-written kernel: runs eagerly inside a compiled model (docs/architecture.md)
def bigbird_attention(q: Tensor, k: Tensor, v: Tensor, *, block_size: int, num_global: int, random_blocks: Tensor,
                      causal: bool, key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """BigBird-ITC block-sparse attention, see the module docstring.

    Args:
        q, k, v: ``[B, H, T, d]``, float64 / float32 / bfloat16.
        block_size: tokens per block.
        num_global: global blocks (the first ones), >= 0.
        random_blocks: ``[Bm, nb, r]`` long from ``random_blocks()`` (``Bm`` = 1 or B), ``nb = ceil(T/block_size)``.
        causal: hide keys after the query.
        key_padding_mask: ``[B, T]`` bool, True = real key.
        scale: score scale, default ``1/sqrt(d)``.

    Returns:
        ``[B, H, T, d]`` in the dtype of q.

    Raises:
        ValueError: sizes out of range or a ``random_blocks`` table of the wrong shape.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if isinstance(num_global, bool) or not isinstance(num_global, int) or num_global < 0:
        raise ValueError(f"num_global must be an int >= 0, got {num_global!r}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be [B, H, T, d] of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    t = q.shape[2]
    nb = -(-t // block_size)
    if random_blocks.dim() != 3 or random_blocks.shape[1] != nb or random_blocks.shape[0] not in (1, q.shape[0]):
        raise ValueError(f"random_blocks must be [1 or B, nb={nb}, r], got {tuple(random_blocks.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if t <= num_global * block_size:  # every block is global: every key, O(T²·d)
        return global_rows_attention(q, k, v, t, causal=causal, key_padding_mask=key_padding_mask, scale=scale)
    pattern = local_pattern(t, block_size=block_size, num_global=num_global, random=random_blocks, causal=causal,
                            device=q.device)
    plan = LocalPlan(q.shape[0], q.shape[1], t, block_size, pattern.key_index, pattern.band, random_blocks,
                     num_global, causal, key_padding_mask, q.dtype)
    return blocks_attention(q, k, v, plan, scale, key_padding_mask=key_padding_mask)
