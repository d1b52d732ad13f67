"""Shared machinery of the exact-attention mixers (``softmax``, ``tiled_softmax``, ``sliding_window``): the fused
QKV projection with multi-/grouped-query heads, RoPE or ALiBi, and KV-cache decoding. The mixers differ only in
``attend`` (how the attention op is computed), so their parameters are identical and a state dict saved from one
loads into any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.heads import split_heads
from ..nn.kv_cache import KVCache
from ..nn.positions import Rotary, alibi_slopes
from ..ops.softmax.bias import dense_bias
from ..ops.softmax import naive, split_kv
from .base import Mixer, MixerConfig


@dataclass(frozen=True)
class QKVConfig(MixerConfig):
    """Options of a mixer built on the fused QKV and output projections (every ``AttentionMixer``).

    Attributes:
        num_kv_heads: key/value heads; ``None`` = ``num_heads`` (multi-head), 1 = multi-query, else grouped-query
            (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need"; Ainslie et al. 2023, GQA).
            Must divide ``num_heads``.
        bias: use biases in the QKV and output projections.
    """

    num_kv_heads: int | None = None
    bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        kv = self.kv_heads
        if kv <= 0 or self.num_heads % kv:
            raise ValueError(f"num_kv_heads={self.num_kv_heads!r} must be a positive divisor of "
                             f"num_heads={self.num_heads}")

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads


@dataclass(frozen=True)
class RotaryConfig(QKVConfig):
    """``QKVConfig`` of a mixer that accepts RoPE. ``rope_base``: the RoPE frequency base (Su et al. 2021), used
    when ``position="rope"``."""

    rope_base: float = 10000.0


@dataclass(frozen=True)
class AttentionConfig(RotaryConfig):
    """``RotaryConfig`` of the mixers that decode through a KV cache (``softmax``, ``tiled_softmax``,
    ``sliding_window``). ``split_kv_size``: during decoding, caches longer than this are attended in chunks of this
    many keys whose partial results are merged (split-KV / flash-decoding); exact either way."""

    split_kv_size: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split_kv_size <= 0:
            raise ValueError(f"split_kv_size must be positive, got {self.split_kv_size}")


def repeat_kv(x: Tensor, num_heads: int) -> Tensor:
    """Expand ``[B, H_kv, T, d]`` keys/values to ``[B, H, T, d]`` for grouped-query attention (no copy if equal)."""
    groups = num_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class AttentionMixer(Mixer):
    """Base of the softmax-attention mixers; subclasses implement ``attend``."""

    config_class = AttentionConfig
    config: QKVConfig

    def __init__(self, config: QKVConfig) -> None:
        super().__init__(config)
        h, hkv, d = config.num_heads, config.kv_heads, config.head_dim
        self.qkv = nn.Linear(config.dim, (h + 2 * hkv) * d, bias=config.bias)
        self.out = nn.Linear(h * d, config.dim, bias=config.bias)
        self.rotary = Rotary(d, config.rope_base) if config.position == "rope" else None  # only RotaryConfig
        slopes = alibi_slopes(h) if config.position == "alibi" else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """q ``[B, H, T, d]``, k/v ``[B, H_kv, T, d]`` (RoPE already applied) -> ``[B, H, T, d]``."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x ``[B, T, D]`` -> q ``[B, H, T, d]``, k, v ``[B, H_kv, T, d]`` with RoPE at ``positions`` ``[T]``."""
        cfg = self.config
        h, hkv = cfg.num_heads, cfg.kv_heads
        q, k, v = split_heads(self.qkv(x), (h, hkv, hkv), cfg.head_dim)  # [B, n, T, d] views
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))
        o = self.attend(q, k, v, key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def window_bounds(self) -> tuple[int, int] | None:
        """Keys each query may see as ``(left, right)`` offsets (``None`` = all); sliding-window mixers override."""
        return None

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """``attend`` computed through the family's naive oracle (same shapes); the default is dense softmax
        attention restricted to ``window_bounds``. Mixers with another attention op override this."""
        h = self.config.num_heads
        return naive.attention(q, repeat_kv(k, h), repeat_kv(v, h), causal=self.config.causal,
                               key_padding_mask=key_padding_mask, alibi_slopes=self.alibi_slopes,
                               window=self.window_bounds())

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))
        o = self.attend_oracle(q, k, v, key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def decode_window(self) -> int | None:
        """Keys a decoding step needs to keep (``None`` = all); sliding-window mixers override."""
        return None

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache.empty(batch_size, self.config.kv_heads, self.config.head_dim, device=device, dtype=dtype,
                             max_keep=self.decode_window())

    def _forward_state(self, x: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """Prefill: the causal forward of ``x [B, T, D]`` after the ``state.length`` cached tokens, in one pass.
        From an empty cache this is ``attend`` itself; after a prefix, the T queries attend to the kept keys and
        their own (end-aligned causal mask, the window, ALiBi) through SDPA with a dense bias."""
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be the KVCache from init_state, got {type(state).__name__}")
        t = x.shape[1]
        q, k, v = self.project(x, torch.arange(state.length, state.length + t, device=x.device))
        if state.length == 0:
            o = self.attend(q, k, v, None)
        else:
            old_k, old_v = state.keys_values()
            keys, values = torch.cat([old_k.to(k.dtype), k], dim=2), torch.cat([old_v.to(v.dtype), v], dim=2)
            bias = dense_bias(t, keys.shape[2], causal=True, alibi_slopes=self.alibi_slopes,
                              window=self.window_bounds(), dtype=q.dtype, device=q.device)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, enable_gqa=keys.shape[1] != q.shape[1])
        return self.out(rearrange(o, "b h t d -> b t (h d)")), state.append(k, v)

    def _step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be the KVCache from init_state, got {type(state).__name__}")
        pos = torch.tensor([state.length], device=x_t.device)
        q, k, v = self.project(x_t[:, None, :], pos)
        state = state.append(k, v)
        keys, values = state.keys_values()
        slopes = self.alibi_slopes
        if keys.shape[2] > self.config.split_kv_size:
            h = self.config.num_heads
            o = split_kv.split_kv_attention(q, repeat_kv(keys, h), repeat_kv(values, h), alibi_slopes=slopes,
                                   split_size=self.config.split_kv_size, causal=True)
        else:
            # one query sees every kept key, so only ALiBi needs a bias
            bias = None if slopes is None else dense_bias(1, keys.shape[2], alibi_slopes=slopes, dtype=q.dtype,
                                                          device=q.device)
            o = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=bias,
                                               enable_gqa=keys.shape[1] != q.shape[1])
        return self.out(rearrange(o, "b h t d -> b (t h d)")), state
