"""Linformer attention, fast path (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity", Eq. 7).

Same signature and semantics as ``ops.lowrank.naive.linformer_attention``. Two steps:

1. The sequence projections E K and F V as plain GEMMs ``[k, T] @ [T, H_kv·d]`` (one per batch member when E is
   shared by the heads, a batched ``[H_kv, k, T] @ [H_kv, T, d]`` otherwise). Padded keys/values are zeroed first.
2. softmax(Q (E K)ᵀ/√d) (F V) through ``torch.nn.functional.scaled_dot_product_attention``: its fused CPU kernel
   streams the ``[T, k]`` score matrix in tiles and keeps only the log-sum-exp for backward, so neither pass stores
   T·k scores per head.

Complexity: O(B·H·T·k·d) time, O(B·H·(T + k)·d + k·L) memory in forward and backward. With bfloat16 inputs the
projections and the attention run in bfloat16 (E, F are cast to the input dtype).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _columns(p: Tensor, t: int) -> Tensor:
    """The first ``t`` columns of ``p [.., k, L]``; ``p`` itself when ``t == L``: a slice's backward zero-fills and
    copies a full-size gradient even when it keeps every column, and ``squeeze`` (not ``[0]``) for the same reason."""
    return p if p.shape[-1] == t else p[..., :t]


def _project(p: Tensor, x: Tensor) -> Tensor:
    """Sequence projection ``[1|H_kv, k, T]`` x ``[B, H_kv, T, d]`` -> ``[B, H_kv, k, d]``."""
    b, hkv, t, d = x.shape
    p = p.to(x.dtype)
    if p.shape[0] == 1:
        # one GEMM over all heads: [k, T] @ [B, T, H_kv·d]; the view is free when x came from a fused projection
        flat = rearrange(x, "b h t d -> b t (h d)")
        return rearrange(torch.matmul(p.squeeze(0), flat), "b k (h d) -> b h k d", h=hkv)
    return torch.matmul(p.unsqueeze(0), x)  # [B, H_kv, k, d]


def linformer_attention(q: Tensor, k: Tensor, v: Tensor, e: Tensor, f: Tensor, *,
                        key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Linformer attention in O(T·k·d); see ``naive.linformer_attention`` for the arguments.

    Raises:
        ValueError: shapes that do not match (``e``/``f`` shorter than T, heads that do not divide).
    """
    b, h, t, d = q.shape
    hkv = k.shape[1]
    if k.shape != (b, hkv, t, d) or v.shape != k.shape or h % hkv:
        raise ValueError(f"q [B, H, T, d] and k, v [B, H_kv, T, d] with H_kv | H expected, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if e.dim() != 3 or e.shape != f.shape or e.shape[0] not in (1, hkv) or e.shape[2] < t:
        raise ValueError(f"e, f must be [1 or H_kv={hkv}, k, L >= T={t}], got e {tuple(e.shape)}, f {tuple(f.shape)}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :, None].to(k.dtype)  # [B, 1, T, 1]
        k, v = k * keep, v * keep
    k_proj = _project(_columns(e, t), k)  # E K [B, H_kv, k, d]
    v_proj = _project(_columns(f, t), v)  # F V
    return F.scaled_dot_product_attention(q, k_proj.to(q.dtype), v_proj.to(q.dtype), scale=scale,
                                          enable_gqa=hkv != h)


def linformer_attention_from_inputs(q: Tensor, x: Tensor, w_k: Tensor, w_v: Tensor, b_k: Tensor | None,
                                    b_v: Tensor | None, e: Tensor, f: Tensor, *, kv_heads: int,
                                    key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Linformer attention with E, F shared by all heads, projecting the *inputs* first:

        E (X W_kᵀ + 1 b_kᵀ) = (E X) W_kᵀ + (E 1) b_kᵀ          (associativity; same for F and V)

    so the key/value maps run on ``proj_len`` rows instead of T (the layer costs O(T·k·D) for E X and F X instead of
    O(T·D·2D) for K, V plus O(T·k·D) for E K, F V). Same result as ``linformer_attention`` on ``k = X W_kᵀ + b_k``.

    Args:
        q: ``[B, H, T, d]``; x: ``[B, T, D]`` the mixer input; w_k, w_v: ``[H_kv·d, D]``; b_k, b_v: ``[H_kv·d]`` or
            None; e, f: ``[1, k, L >= T]``; kv_heads: H_kv; key_padding_mask: ``[B, T]`` (padded rows of X are
            zeroed, i.e. padded keys and values, biases included, are zeroed before the projection).

    Returns:
        ``[B, H, T, d]``.
    """
    b, h, t, d = q.shape
    if e.dim() != 3 or e.shape[0] != 1 or e.shape != f.shape or e.shape[2] < t:
        raise ValueError(f"e, f must be [1, k, L >= T={t}], got e {tuple(e.shape)}, f {tuple(f.shape)}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    keep = None if key_padding_mask is None else key_padding_mask.to(x.dtype)  # [B, T]
    xm = x if keep is None else x * keep[..., None]

    def project(p: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        p = _columns(p, t).squeeze(0).to(x.dtype)  # [k, T]
        xp = torch.matmul(p, xm)  # E X [B, k, D]
        out = torch.matmul(xp, w.to(x.dtype).t())  # [B, k, H_kv·d]
        if bias is not None:
            rows = p.sum(-1) if keep is None else torch.matmul(keep, p.t())  # E 1 (real tokens): [k] or [B, k]
            out = out + rows[..., None] * bias.to(x.dtype)
        return rearrange(out, "b k (h d) -> b h k d", h=kv_heads)

    k_proj = project(e, w_k, b_k)  # [B, H_kv, k, d]
    v_proj = project(f, w_v, b_v)
    return F.scaled_dot_product_attention(q, k_proj.to(q.dtype), v_proj.to(q.dtype), scale=scale,
                                          enable_gqa=kv_heads != h)
