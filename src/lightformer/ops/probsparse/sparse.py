"""ProbSparse attention of the selected queries (Zhou et al. 2021, "Informer", Sec. 3.1, Eq. 3): the fast path.

Given the active queries chosen by ``naive.select_queries`` (shared with the oracle, see its docstring), only those
are scored against the keys: ``[A, T]`` scores instead of ``[T, T]`` (A = u = O(ln T) bidirectional, O(ln² T)
causal), O(A·T·d) time. The lazy queries get the mean of V over their allowed real keys: one masked sum
(bidirectional) or a cumulative sum (causal), O(T·d). Active outputs are then scattered over the lazy ones.

Memory: when ``B·H·A·T`` exceeds ``2^24`` the active queries are processed in chunks under activation
checkpointing (each chunk's ``[c, T]`` probabilities are recomputed in the backward pass instead of stored), so the
working memory stays O(T·d + 2^24) forward and backward. Same semantics as ``naive.probsparse_attention``.
Dtypes: with bf16/fp16 inputs the matmuls run in the input dtype, softmax and the means in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _attend(qs: Tensor, k: Tensor, v: Tensor, qpos: Tensor, key_padding_mask: Tensor | None, causal: bool
            ) -> Tensor:
    """Selected queries qs ``[B, H, c, d]`` at positions qpos ``[B, H, c]`` -> ``[B, H, c, d]`` (float32/64)."""
    t = k.shape[2]
    sd = torch.float64 if qs.dtype == torch.float64 else torch.float32
    s = (qs @ k.transpose(-1, -2)).to(sd) / math.sqrt(qs.shape[-1])  # [B, H, c, T]
    if causal:
        s = s.masked_fill(torch.arange(t, device=k.device) > qpos[..., None], float("-inf"))
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    if causal or key_padding_mask is not None:  # a row with no key (an ignored slot) must not make NaN gradients
        s = s.masked_fill(torch.isneginf(s).all(-1, keepdim=True), 0.0)
    return (torch.softmax(s, dim=-1).to(v.dtype) @ v).to(sd)


def lazy_mean(v: Tensor, *, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
    """Mean of V over the allowed real keys: ``[B, H, 1, d]`` bidirectional, ``[B, H, T, d]`` causal (float32/64);
    0 where no key is allowed."""
    sd = torch.float64 if v.dtype == torch.float64 else torch.float32
    w = (torch.ones(v.shape[0], v.shape[2], dtype=sd, device=v.device) if key_padding_mask is None
         else key_padding_mask.to(sd))[:, None, :, None]  # [B, 1, T, 1]
    vw = v.to(sd) * w
    if causal:
        return vw.cumsum(2) / w.cumsum(2).clamp_min(1.0)
    return vw.sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp_min(1.0)


def probsparse_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor, *, causal: bool,
                         key_padding_mask: Tensor | None = None, query_chunk: int | None = None) -> Tensor:
    """Same signature as ``naive.probsparse_attention`` (plus ``query_chunk``: active queries per checkpointed
    chunk; default: none below 2^24 score elements, else about 2^24 / (B·H·T)). Returns ``[B, H, T, d]``."""
    b, h, t, d = q.shape
    a = idx.shape[-1]
    # k, v arrive as strided views of the fused QKV projection: as they are, every matmul against kᵀ makes a
    # transposing copy of K (~0.7 GB/s); one plain row copy each here is far cheaper
    k, v = k.contiguous(), v.contiguous()
    qs = q.gather(2, idx[..., None].expand(b, h, a, d))  # [B, H, A, d]
    if query_chunk is None and b * h * a * t <= (1 << 24):
        att = _attend(qs, k, v, idx, key_padding_mask, causal)
    else:
        c = query_chunk or max(1, (1 << 24) // (b * h * t))
        att = torch.cat([checkpoint(_attend, qs[:, :, i:i + c], k, v, idx[..., i:i + c], key_padding_mask, causal,
                                    use_reentrant=False) for i in range(0, a, c)], dim=2)
    lazy = lazy_mean(v, causal=causal, key_padding_mask=key_padding_mask).expand(b, h, t, d)
    att = torch.where(valid[..., None], att, lazy.gather(2, idx[..., None].expand(b, h, a, d)))
    return lazy.scatter(2, idx[..., None].expand(b, h, a, d), att).to(q.dtype)
