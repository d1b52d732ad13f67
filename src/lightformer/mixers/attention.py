"""Shared machinery of the exact-attention mixers (``softmax``, ``tiled_softmax``, ``sliding_window``): the fused
QKV projection with multi-/grouped-query heads, RoPE, ALiBi or T5's learned relative bias, and KV-cache decoding.
The mixers differ only in ``attend`` (how the attention op is computed), so their parameters are identical and a
state dict saved from one loads into any other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.heads import split_heads
from ..nn.kv_cache import KVCache
from ..nn.positions import Rotary, alibi_slopes, t5_bucket
from ..ops.softmax.bias import bucketed_bias, dense_bias
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
        head_dim: width d of each head; ``None`` = ``dim // num_heads`` (the usual H·d = D). Set, the inner width
            H·d may differ from D (``qkv`` is ``[(H + 2·H_kv)·d, D]``, ``out`` ``[D, H·d]``): a layer whose heads
            were removed by ``compress`` ``structured_prune`` keeps its head width with fewer heads. Resolved at
            construction, so ``config.head_dim`` is always the int (a ``dataclasses.replace`` that changes
            ``num_heads`` must pass ``head_dim=None`` to derive it again).
    """

    num_kv_heads: int | None = None
    bias: bool = False
    head_dim: int | None = None  # type: ignore[assignment]  # the base class derives it; here it may be given

    def _explicit_head_dim(self) -> bool:
        return self.head_dim is not None

    def __post_init__(self) -> None:
        if self.head_dim is not None and (isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int)
                                          or self.head_dim <= 0):
            raise ValueError(f"head_dim must be a positive int or None, got {self.head_dim!r}")
        super().__post_init__()
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.num_heads)
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


@dataclass(frozen=True)
class ExactAttentionConfig(AttentionConfig):
    """``AttentionConfig`` of the exact mixers (``softmax``, ``tiled_softmax``), which also take T5's learned
    bucketed relative position bias (``position="t5"``; Raffel et al. 2020, Sec. 2.1; see
    ``nn.positions.t5_bucket``). Buckets are bidirectional when ``causal=False`` and past-only when causal.

    Attributes:
        t5_num_buckets: rows of the bias table ``rel_bias [t5_num_buckets, num_heads]`` (T5: 32); at least 4
            bidirectional, 2 causal.
        t5_max_distance: relative distance from which on all keys share the last bucket (T5: 128); above the exact
            buckets of a direction (a quarter of ``t5_num_buckets`` bidirectional, half causal).
    """

    t5_num_buckets: int = 32
    t5_max_distance: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        least = 2 if self.causal else 4
        if self.t5_num_buckets < least:
            raise ValueError(f"t5_num_buckets must be >= {least} with causal={self.causal} (each direction needs "
                             f"an exact bucket), got {self.t5_num_buckets}")
        exact = (self.t5_num_buckets if self.causal else self.t5_num_buckets // 2) // 2
        if self.t5_max_distance <= exact:
            raise ValueError(f"t5_max_distance must exceed the {exact} exact buckets of a direction "
                             f"(t5_num_buckets={self.t5_num_buckets}), got {self.t5_max_distance}")


def repeat_kv(x: Tensor, num_heads: int) -> Tensor:
    """Expand ``[B, H_kv, T, d]`` keys/values to ``[B, H, T, d]`` for grouped-query attention (no copy if equal)."""
    groups = num_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class AttentionMixer(Mixer):
    """Base of the softmax-attention mixers; subclasses implement ``attend``.

    With ``position="t5"`` (only mixers whose capabilities accept it, with an ``ExactAttentionConfig``) the mixer
    owns ``rel_bias``, a learned ``nn.Parameter`` ``[t5_num_buckets, num_heads]`` (float32), initialised to zeros
    (see ``init_weights``), and ``rel_bucket``, the T5 bucket function of its config; otherwise ``rel_bias`` is
    ``None``. A model may tie one table across layers, as T5 does, by assigning the same parameter to each
    mixer's ``rel_bias``.
    """

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
        self.rel_bucket = None
        self.register_parameter("rel_bias", None)
        if config.position == "t5":  # the base class let it through only for a mixer that accepts t5
            self.rel_bucket = functools.partial(t5_bucket, bidirectional=not config.causal,
                                                num_buckets=config.t5_num_buckets, max_distance=config.t5_max_distance)
            self.rel_bias = nn.Parameter(torch.zeros(config.t5_num_buckets, h))

    def init_weights(self, num_layers: int) -> None:
        """The T5 table starts at zero: the mixer then starts as position-free attention and learns only the offsets
        the data asks for, and zero is no saddle (the table's gradient, ``dS`` summed by bucket, does not depend on
        its value), so every bucket learns from the first step. Set here so the model's generic init cannot change
        it."""
        if self.rel_bias is not None:
            nn.init.zeros_(self.rel_bias)

    def position_bias(self, tq: int, tk: int, dtype: torch.dtype) -> Tensor | None:
        """T5's relative bias as a dense ``[1, H, Tq, Tk]`` tensor in ``dtype`` for ``Tq`` queries end-aligned to
        ``Tk`` keys (the query of a decoding step sits at the cache length), differentiable in ``rel_bias``;
        ``None`` without ``position="t5"``. For the dense paths (oracle, SDPA, decoding) only."""
        if self.rel_bias is None:
            return None
        return bucketed_bias(self.rel_bias, self.rel_bucket, tq, tk).to(dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """q ``[B, H, T, d]``, k/v ``[B, H_kv, T, d]`` (RoPE already applied) -> ``[B, H, T, d]``.

        ``softmax``, ``tiled_softmax`` and ``sliding_window`` also take ``key_bias=`` ``[B, T]`` (floating, no
        gradient), added to every query's score of key j: ToMe's proportional attention ``softmax(QKᵀ/√d + log s)``
        over merged tokens of sizes s (Bolya et al. 2023, Eq. 1; ``models/tome.py``)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x ``[B, T, D]`` -> q ``[B, H, T, d]``, k, v ``[B, H_kv, T, d]`` with RoPE at ``positions`` ``[T]`` (or
        per-sequence, possibly fractional ``[B, T]``: merged tokens' positions, ``models/tome.py``)."""
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

    def attend_oracle(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                      key_bias: Tensor | None = None) -> Tensor:
        """``attend`` computed through the family's naive oracle (same shapes); the default is dense softmax
        attention restricted to ``window_bounds``, with ``key_bias [B, T]`` (see ``attend``) added per key. Mixers
        with another attention op override this."""
        h = self.config.num_heads
        bias = self.position_bias(q.shape[2], k.shape[2], q.dtype)
        if key_bias is not None:
            per_key = key_bias[:, None, None, :].to(q.dtype)
            bias = per_key if bias is None else bias + per_key
        return naive.attention(q, repeat_kv(k, h), repeat_kv(v, h), causal=self.config.causal,
                               key_padding_mask=key_padding_mask, alibi_slopes=self.alibi_slopes,
                               window=self.window_bounds(), bias=bias)

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
        their own (end-aligned causal mask, the window, ALiBi or T5) through SDPA with a dense bias."""
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
            rel = self.position_bias(t, keys.shape[2], q.dtype)
            if rel is not None:
                bias = bias + rel
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
        # the query sits at position state.length, the newest of the kept keys: T5's bias end-aligned to the cache
        rel = self.position_bias(1, keys.shape[2], q.dtype)  # [1, H, 1, Tk]
        if keys.shape[2] > self.config.split_kv_size:
            h = self.config.num_heads
            o = split_kv.split_kv_attention(q, repeat_kv(keys, h), repeat_kv(values, h), alibi_slopes=slopes,
                                   split_size=self.config.split_kv_size, causal=True, bias=rel)
        else:
            # one query sees every kept key, so only ALiBi or T5 needs a bias
            bias = rel if slopes is None else dense_bias(1, keys.shape[2], alibi_slopes=slopes, dtype=q.dtype,
                                                         device=q.device)
            o = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=bias,
                                               enable_gqa=keys.shape[1] != q.shape[1])
        return self.out(rearrange(o, "b h t d -> b (t h d)")), state
