"""``softmax``: exact multi-head attention through PyTorch's ``scaled_dot_product_attention``.

    Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d) + bias) V        (Vaswani et al. 2017, Eq. 1)

with multi-query / grouped-query key-value heads (``num_kv_heads``; Shazeer 2019) and KV-cache decoding. This is
the baseline every other mixer is measured against. With a padding mask, ALiBi or T5's relative bias
(``position="t5"``, a learned table ``rel_bias [t5_num_buckets, H]``), SDPA needs the bias materialised as a
``[T, T]`` (T5: ``[H, T, T]``) tensor (its fused CPU kernel takes no bias); ``tiled_softmax`` avoids that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.softmax.bias import dense_bias
from .attention import AttentionMixer, ExactAttentionConfig
from .base import MIXERS, Capabilities


def no_empty_rows(bias: Tensor) -> Tensor:
    """Let every query see its own key (the diagonal of the end-aligned score matrix), so that no row is all
    ``-inf`` (SDPA returns NaN there). Only rows that saw nothing change, and those are padded queries, whose
    outputs are unspecified by the mixer contract."""
    tq, tk = bias.shape[-2:]
    diag = torch.zeros(tq, tk, dtype=torch.bool, device=bias.device)
    diag[torch.arange(tq), torch.arange(tk - tq, tk)] = True
    empty = torch.isneginf(bias).all(dim=-1, keepdim=True)
    return bias.masked_fill(empty & diag, 0.0)


@MIXERS.register("softmax")
class SoftmaxAttention(AttentionMixer):
    """Exact multi-head softmax attention (torch SDPA). x ``[B, T, D]`` -> ``[B, T, D]``; O(T²·d) time."""

    config_class = ExactAttentionConfig
    config: ExactAttentionConfig
    capabilities = Capabilities(exact=True, causal=True, padding_mask=True, decode=True, complexity="T²·d",
                                prefill=True, positions=frozenset({"none", "rope", "alibi", "t5"}), time_exponent=2)
    # T5's table is a set of additive logit offsets, not a weight matrix: decay would pull it to "no position"
    no_weight_decay = ("rel_bias",)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
               key_bias: Tensor | None = None) -> Tensor:
        gqa = k.shape[1] != q.shape[1]
        plain = self.alibi_slopes is None and self.rel_bias is None
        if key_padding_mask is None and plain and key_bias is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.config.causal, enable_gqa=gqa)
        if key_bias is not None and key_padding_mask is None and plain and not self.config.causal:
            # ToMe's log sizes alone: one [B, 1, 1, T] row broadcast over heads and queries, no [T, T] mask
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :].to(q.dtype),
                                                  enable_gqa=gqa)
        t = q.shape[2]
        bias = dense_bias(t, t, causal=self.config.causal, key_padding_mask=key_padding_mask,
                          alibi_slopes=self.alibi_slopes, dtype=q.dtype, device=q.device)
        rel = self.position_bias(t, t, q.dtype)
        if rel is not None:
            bias = bias + rel  # [B | 1, H, T, T]
        if key_bias is not None:
            bias = bias + key_bias[:, None, None, :].to(q.dtype)
        if key_padding_mask is not None:
            bias = no_empty_rows(bias)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
