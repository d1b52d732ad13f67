"""``bigbird``: block-sparse attention with window, global and random blocks (BigBird, ITC).

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", Sec. 2 (the generalised attention graph: random
``r``, window ``w`` and global ``g`` components) and App. D (the blocked form; ITC = internal transformer
construction, the global tokens are the first blocks of the sequence). With blocks of ``block_size`` tokens, query
block n attends to

    key blocks {n-1, n, n+1} ∪ {0 .. num_global-1} ∪ R(n),     |R(n)| = num_random,

and the global blocks attend to every key; causal=True adds ``j <= i`` and draws R(n) from the past only
(``m < n-1``), so causality is exact. T not a multiple of ``block_size``: the last block is partial (masked, never
truncated). Padding masks and RoPE supported.

Random blocks: fixed per module. A seed is drawn from torch's generator at construction (so ``torch.manual_seed``
fixes it) and stored in the ``random_seed`` buffer (saved with the state dict); R(n) is then a deterministic function
of (seed, n, which blocks exist and hold a real token), see ``ops/sparse/bigbird.py``: the same for every call and
"re-drawn" for a new length only in that blocks which do not exist are not chosen, so a right-padded batch sees the
same random blocks as its unpadded sequences. There is no redraw during training.

x: ``[B, T, D]`` -> ``[B, T, D]``; time O(T·block_size·(3 + num_global + num_random)·d), computed blockwise
(``ops/sparse/bigbird_local.py``: per group of query blocks, their ``(3 + g + r)·block_size`` key rows side by side,
one softmax, the probabilities kept for the backward: memory O(T·block_size·(3 + g + r))).
Parameters: the fused QKV and output projections of ``AttentionMixer`` (those of ``softmax``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.sparse import naive
from ..ops.sparse.bigbird import bigbird_attention, block_valid, random_blocks
from .attention import RotaryConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class BigBirdConfig(RotaryConfig):
    """Attributes:
        block_size: tokens per block (paper: 64, App. D).
        num_global: global blocks, the first ones (ITC; paper: 2 blocks = 2·64 tokens).
        num_random: random key blocks per query block (paper: 3).
    """

    block_size: int = 64
    num_global: int = 2
    num_random: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("block_size", "num_global", "num_random"):
            value = getattr(self, name)
            low = 1 if name == "block_size" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@MIXERS.register("bigbird")
class BigBird(AttentionMixer):
    """BigBird-ITC block-sparse attention. x ``[B, T, D]`` -> ``[B, T, D]``;
    O(T·block_size·(3 + num_global + num_random)·d)."""

    config_class = BigBirdConfig
    config: BigBirdConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="T·block_size·(3+num_global+num_random)·d",
                                positions=frozenset({"none", "rope"}), time_exponent=1)
    example_options = {"block_size": 4, "num_global": 1, "num_random": 2}

    def __init__(self, config: BigBirdConfig) -> None:
        super().__init__(config)
        self.register_buffer("random_seed", torch.randint(0, 2**31 - 1, (), device="cpu"), persistent=True)
        self._tables: dict[tuple, Tensor] = {}

    def random_blocks(self, t: int, key_padding_mask: Tensor | None, device: torch.device) -> Tensor:
        """The random key blocks ``[Bm, nb, num_random]`` (``-1`` = none) for a length-``t`` call."""
        cfg = self.config
        nb = -(-t // cfg.block_size)
        seed = int(self.random_seed)
        if key_padding_mask is not None:
            return random_blocks(seed, nb, num_global=cfg.num_global, num_random=cfg.num_random, causal=cfg.causal,
                                 block_valid=block_valid(key_padding_mask, cfg.block_size), device=device)
        key = (seed, nb, str(device))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= 8:  # a few lengths in practice; keep the cache bounded
                self._tables.pop(next(iter(self._tables)))
            table = random_blocks(seed, nb, num_global=cfg.num_global, num_random=cfg.num_random,
                                  causal=cfg.causal, device=device)
            self._tables[key] = table
        return table

    def _attend_with(self, op, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        h = cfg.num_heads
        table = self.random_blocks(q.shape[2], key_padding_mask, q.device)
        return op(q, repeat_kv(k, h), repeat_kv(v, h), block_size=cfg.block_size, num_global=cfg.num_global,
                  random_blocks=table, causal=cfg.causal, key_padding_mask=key_padding_mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._attend_with(bigbird_attention, q, k, v, key_padding_mask)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._attend_with(naive.bigbird_attention, q, k, v, key_padding_mask)
