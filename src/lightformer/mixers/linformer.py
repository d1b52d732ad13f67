"""``linformer``: attention over keys and values projected along the sequence to ``proj_len`` rows.

Wang, Li, Khabsa, Fang, Ma 2020, "Linformer: Self-Attention with Linear Complexity", Eq. 7:

    head_i = softmax( Q_i (E K_i)ᵀ / sqrt(d) ) (F V_i),      E, F: [proj_len, max_len] learned

x: ``[B, T, D]`` -> ``[B, T, D]``; q, k, v come from the shared fused projection of ``AttentionMixer`` (same
parameter names ``qkv``/``out`` as ``softmax``; grouped-query heads via ``num_kv_heads``).

* Sequences shorter than ``max_len`` use the first T columns of E and F (Sec. 4 trains at fixed n; taking the
  prefix is what makes a T < n sequence, and a right-padded batch, well defined). T > ``max_len`` raises.
* Padded keys and values are zeroed before the projection, so the result at real positions equals the unpadded run.
* Parameter sharing (Sec. 4, "Parameter sharing"): ``share_heads=True`` (default) is the paper's *headwise*
  sharing: one E and one F, ``[proj_len, max_len]`` each, used by every head of the layer. ``share_heads=False``
  gives each key/value head its own pair ``[H_kv, proj_len, max_len]``. ``share_kv=True`` additionally sets F = E
  (the paper's *key-value* sharing; only the parameter ``e`` exists then). Layerwise sharing is the model's business.
* Non-causal only: the projection mixes all positions, so ``causal=True`` raises ``ValueError`` at construction.

Complexity: O(T·proj_len·d) time and memory per head (the attention runs through SDPA, see
``ops/lowrank/linformer.py``); parameters 2·proj_len·max_len (per kv head when ``share_heads=False``). With
``share_heads=True`` the forward projects X along the sequence before the key/value maps, (E X) W_k = E (X W_k)
(exact algebra, fewer flops); the oracle computes K = X W_k first. That shortcut reads ``qkv.weight``, so it is
taken only when ``qkv`` is a plain ``nn.Linear`` (``mixers.base.plain_linear``); a quantised or factorised ``qkv``
(``lightformer compress``) or one with hooks is called like any other layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.lowrank import linformer as fast
from ..ops.lowrank import naive
from .attention import QKVConfig, AttentionMixer
from .base import MIXERS, Capabilities, plain_linear


@dataclass(frozen=True)
class LinformerConfig(QKVConfig):
    """Linformer options.

    Attributes:
        max_len: longest sequence n (required): E and F have ``max_len`` columns.
        proj_len: k, the number of projected keys/values (paper's k; default 256).
        share_kv: E = F (key-value sharing).
        share_heads: one E/F for all heads (headwise sharing, default) instead of one per kv head.
    """

    max_len: int | None = None
    proj_len: int = 256
    share_kv: bool = False
    share_heads: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len is None:
            raise ValueError("max_len is required for linformer: E and F have one column per position "
                             "(pass max_len=<longest sequence>)")
        if self.max_len <= 0:
            raise ValueError(f"max_len must be a positive int, got {self.max_len!r}")
        if self.proj_len <= 0:
            raise ValueError(f"proj_len must be a positive int, got {self.proj_len!r}")
        for name in ("share_kv", "share_heads"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


@MIXERS.register("linformer")
class Linformer(AttentionMixer):
    """Linformer self-attention (non-causal). x ``[B, T, D]`` -> ``[B, T, D]``, T <= ``max_len``.

    Raises:
        ValueError: ``causal=True`` (at construction), ``max_len`` missing, T > ``max_len`` (at call).
    """

    config_class = LinformerConfig
    config: LinformerConfig
    capabilities = Capabilities(exact=False, causal=False, padding_mask=True, decode=False,
                                complexity="T·proj_len·d", max_len=None, positions=frozenset({"none"}), time_exponent=1)
    example_options = {"max_len": 64, "proj_len": 8}

    def __init__(self, config: LinformerConfig) -> None:
        super().__init__(config)
        heads = 1 if config.share_heads else config.kv_heads
        shape = (heads, config.proj_len, config.max_len)
        # std 1/sqrt(k + n) (Xavier-normal-like): a projected key sums ~n keys with weights of variance 1/(k+n),
        # so its scale stays that of a single key whatever max_len is.
        std = 1.0 / math.sqrt(config.proj_len + config.max_len)
        self.e = nn.Parameter(torch.randn(shape) * std)
        self.f = None if config.share_kv else nn.Parameter(torch.randn(shape) * std)

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def _projections(self) -> tuple[Tensor, Tensor]:
        return self.e, self.e if self.f is None else self.f

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        e, f = self._projections()
        if cfg.share_heads and plain_linear(self.qkv):
            # one E/F for all heads: project the inputs along the sequence first, (E X) W_k = E (X W_k), so the
            # key/value maps run on proj_len rows instead of T (same parameters as the fused qkv projection).
            # Only for a plain nn.Linear: a quantised, factorised or hooked qkv must be called, not read.
            h, hkv, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim
            w_q, w_k, w_v = self.qkv.weight.split([h * d, hkv * d, hkv * d])
            b_q, b_k, b_v = (None,) * 3 if self.qkv.bias is None else self.qkv.bias.split([h * d, hkv * d, hkv * d])
            q = rearrange(nn.functional.linear(x, w_q, b_q), "b t (h d) -> b h t d", d=d)  # [B, H, T, d]
            o = fast.linformer_attention_from_inputs(q, x, w_k, w_v, b_k, b_v, e, f, kv_heads=hkv,
                                                     key_padding_mask=key_padding_mask)
        else:
            q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))  # [B, H, T, d], [B, H_kv, T, d]
            o = fast.linformer_attention(q, k, v, e, f, key_padding_mask=key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))
        e, f = self._projections()
        o = naive.linformer_attention(q, k, v, e, f, key_padding_mask=key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))
