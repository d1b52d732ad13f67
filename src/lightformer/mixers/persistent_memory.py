"""``persistent_memory``: multi-head softmax attention whose keys and values are extended, per head, by N learned
persistent vectors, the attention of the all-attention layer (Sukhbaatar, Grave, Lample, Jégou, Joulin 2019,
"Augmenting Self-attention with Persistent Memory", Sec. 4.1):

    K_t^h = [U_k^h ; W_k^h x_1 .. W_k^h x_t],   V_t^h = [U_v^h ; W_v^h x_1 .. W_v^h x_t]
    y_t^h = softmax(q_t^h · (K_t^h)ᵀ / sqrt(d_h)) V_t^h,   y_t = W_o [y_t^1 .. y_t^H]

with ``U_k^h, U_v^h: [N, d_h]`` the persistent key and value vectors of head h (``num_memory`` = N). They do not
depend on the input, so every query sees all N slots: ``causal=True`` hides the future tokens only (a memory slot is
not a future token) and ``key_padding_mask`` never masks a slot. The paper's all-attention layer also drops the
feed-forward sublayer; that is a block choice, not this mixer's.

Shapes: x ``[B, T, D]`` -> ``[B, T, D]``; ``memory_keys``, ``memory_values``: ``[H_kv, N, d_h]`` parameters (one
set per key/value head; with ``num_kv_heads < num_heads`` a group of query heads shares its key/value head's
memory as it shares its keys). Time O(T·(T + N)·d), memory of the attention O(T·(T + N)) through SDPA.

Init and scale (the paper's reference code, facebookresearch/adaptive-span ``persistent_memory.py``): the stored
keys are drawn N(0, 1/d_h) and multiplied by sqrt(d_h) where they are used, the stored values N(0, 1/N) times
sqrt(N), so both start at unit variance while an adaptive optimizer (Adagrad in the paper, AdamW here) moves them
sqrt(d_h) and sqrt(N) times faster than a plain parameter. Both are exempt from weight decay (``no_weight_decay``)
and redrawn by ``init_weights``, after the model's generic init.

Defaults: ``num_memory = 256``. The paper uses N = 1024 for its 18-layer and 2048 for its 36-layer character
models at width 512 with 8 heads (adaptive-span ``experiments/enwik8_pers_small.sh`` / ``enwik8_pers.sh``);
256 keeps its ratio N = 2·D at the CPU width D = 128 (nanoGPT's CPU config) and costs 256 extra keys per query,
the size of the Performer and Linformer bench defaults. The bench uses the paper's N = 1024 (``BENCH_DEFAULTS``).
``num_memory = 0`` is refused: attention without memory is the ``softmax`` mixer.

Positions: ``none`` or ``rope``. RoPE rotates the queries and the sequence's keys only, never the memory (a slot
has no position): the memory score of a query at position p is ``(R_p q)·u = q·(R_{-p} u)``, that of a key sitting
at position 0. ALiBi is refused (a slot has no distance to the query).

Fast path: ``ops/softmax/persistent.memory_attention`` (one SDPA call over ``[memory; keys]``, the causal mask kept
implicit by N placeholder queries); oracle: ``ops/softmax/naive.memory_attention``. Decoding keeps a ``KVCache`` of
the sequence only: the memory is a parameter, the same for every sequence, so ``State.nbytes()`` counts the cache.
Parameters are those of ``softmax`` plus the two memory tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..nn.kv_cache import KVCache
from ..ops.softmax import naive, persistent
from .attention import AttentionConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities


@dataclass(frozen=True)
class PersistentMemoryConfig(AttentionConfig):
    """``AttentionConfig`` plus ``num_memory``: N, the persistent key/value vectors per key/value head (>= 1)."""

    num_memory: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_memory <= 0:
            raise ValueError(f"num_memory must be a positive int, got {self.num_memory!r} (attention without "
                             "persistent memory is the 'softmax' mixer)")


def repeat_memory(memory: Tensor, num_heads: int) -> Tensor:
    """Expand ``[H_kv, N, d]`` memory to ``[H, N, d]`` for grouped-query heads (no copy if equal)."""
    groups = num_heads // memory.shape[0]
    return memory if groups == 1 else memory.repeat_interleave(groups, dim=0)


@MIXERS.register("persistent_memory")
class PersistentMemoryAttention(AttentionMixer):
    """Softmax attention over N persistent memory slots and the sequence. x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = PersistentMemoryConfig
    config: PersistentMemoryConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, prefill=True,
                                complexity="T·(T+N)·d", positions=frozenset({"none", "rope"}), time_exponent=2)
    example_options = {"num_memory": 8}
    no_weight_decay = ("memory_keys", "memory_values")

    def __init__(self, config: PersistentMemoryConfig) -> None:
        super().__init__(config)
        shape = (config.kv_heads, config.num_memory, config.head_dim)
        self.memory_keys = nn.Parameter(torch.empty(shape))
        self.memory_values = nn.Parameter(torch.empty(shape))
        self.reset_memory()

    def reset_memory(self) -> None:
        """The paper's init: stored keys N(0, 1/d_h), stored values N(0, 1/N) (unit variance once scaled)."""
        with torch.no_grad():
            self.memory_keys.normal_(0.0, 1.0 / math.sqrt(self.config.head_dim))
            self.memory_values.normal_(0.0, 1.0 / math.sqrt(self.config.num_memory))

    def init_weights(self, num_layers: int) -> None:
        super().init_weights(num_layers)
        self.reset_memory()

    def memory(self) -> tuple[Tensor, Tensor]:
        """The memory as used, ``[H_kv, N, d_h]`` each: keys times sqrt(d_h), values times sqrt(N)."""
        cfg = self.config
        return self.memory_keys * math.sqrt(cfg.head_dim), self.memory_values * math.sqrt(cfg.num_memory)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Projections ``2·B·T·D·(H + 2·H_kv)·d_h + 2·B·T·D²`` and attention ``4·B·T·H·d_h·K`` with K = N + T
        keys per query (N + (T+1)/2 on average when causal)."""
        cfg = self.config
        t, d = seq_len, cfg.head_dim
        proj = 2.0 * batch * t * cfg.dim * (cfg.num_heads + 2 * cfg.kv_heads) * d + 2.0 * batch * t * cfg.dim ** 2
        keys = cfg.num_memory + ((t + 1) / 2 if cfg.causal else t)
        return proj + 4.0 * batch * t * cfg.num_heads * d * keys

    # -- attention ----------------------------------------------------------------------------------------------
    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        memory_k, memory_v = self.memory()
        return persistent.memory_attention(q, k, v, memory_k, memory_v, causal=self.config.causal,
                                           key_padding_mask=key_padding_mask)

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        h = self.config.num_heads
        memory_k, memory_v = self.memory()
        return naive.memory_attention(q, repeat_kv(k, h), repeat_kv(v, h), repeat_memory(memory_k, h),
                                      repeat_memory(memory_v, h), causal=self.config.causal,
                                      key_padding_mask=key_padding_mask)

    # -- decoding: a KV cache of the sequence; the memory is a parameter, not state ------------------------------
    def _forward_state(self, x: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """Prefill: from an empty cache, ``attend`` itself; after a prefix, the T queries attend to the memory, the
        cached keys and their own (end-aligned causal mask)."""
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be the KVCache from init_state, got {type(state).__name__}")
        t = x.shape[1]
        q, k, v = self.project(x, torch.arange(state.length, state.length + t, device=x.device))
        if state.length == 0:
            o = self.attend(q, k, v, None)
        else:
            old_k, old_v = state.keys_values()
            keys, values = torch.cat([old_k.to(k.dtype), k], dim=2), torch.cat([old_v.to(v.dtype), v], dim=2)
            memory_k, memory_v = self.memory()
            o = persistent.memory_attention(q, keys, values, memory_k, memory_v, causal=True)
        return self.out(rearrange(o, "b h t d -> b t (h d)")), state.append(k, v)

    def _step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be the KVCache from init_state, got {type(state).__name__}")
        h = self.config.num_heads
        q, k, v = self.project(x_t[:, None, :], torch.tensor([state.length], device=x_t.device))
        state = state.append(k, v)
        keys, values = state.keys_values()
        memory_k, memory_v = self.memory()
        o = persistent.memory_decode(q, repeat_kv(keys, h), repeat_kv(values, h), repeat_memory(memory_k, h),
                                     repeat_memory(memory_v, h), split_size=self.config.split_kv_size)
        return self.out(rearrange(o, "b h t d -> b (t h d)")), state
