"""Nyström attention, fast path (Xiong et al. 2021, "Nyströmformer", Eq. 14-16, Alg. 1).

Same signature and semantics as ``ops.lowrank.naive.nystrom_attention`` (segments, masked landmarks, Eq. 16
pseudo-inverse: see that module's docstring), computed right to left so that no ``[T, T]`` matrix exists:

    out = softmax(Q K̃ᵀ/√d) · ( Z · ( softmax(Q̃ Kᵀ/√d) · V ) )          Z ≈ softmax(Q̃ K̃ᵀ/√d)⁺

* The landmark means are one matmul with the ``[B, m, T]`` averaging matrix (1/|segment| on members), built
  from the token ranks with a cumulative sum instead of the oracle's loops.
* The ``[m, m]`` part (A_S and its iterative pseudo-inverse) runs in float32 or float64 with autocast off: the
  iteration of Eq. 16 multiplies matrices 4 times per step and loses its accuracy in bfloat16.
* The T-sized matmuls run in the input dtype (bfloat16 stays bfloat16); softmax statistics in at least float32.

Complexity: O(B·H·T·m·d + B·H·m³·iterations) time; O(B·H·T·m) memory (the two ``[T, m]`` softmax factors
kept by autograd), linear in T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from ..amp import no_autocast

from .naive import iterative_pinv

_LOW = (torch.bfloat16, torch.float16)


def averaging_matrix(key_padding_mask: Tensor | None, b: int, t: int, m: int, device: torch.device,
                     dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``[B, m, T]`` matrix whose row s averages segment s (rank r -> segment ⌊r·m/n⌋ over real tokens), and the
    landmark validity ``[B, m]``."""
    if key_padding_mask is None:
        seg = (torch.arange(t, device=device) * m // t).expand(b, t)  # [B, T]
    else:
        real = key_padding_mask.long()
        n = real.sum(dim=1, keepdim=True).clamp_min(1)  # [B, 1]
        rank = real.cumsum(dim=1) - 1
        seg = torch.where(key_padding_mask, rank * m // n, torch.full_like(rank, m))  # padded -> dropped column m
    onehot = F.one_hot(seg, m + 1)[..., :m].to(dtype)  # [B, T, m]
    counts = onehot.sum(dim=1)  # [B, m]
    avg = onehot.transpose(1, 2) / counts.clamp_min(1)[..., None]  # [B, m, T]
    return avg, counts > 0


def _nonempty(valid: Tensor) -> Tensor:
    return valid | ~valid.any(dim=-1, keepdim=True)


def _softmax(scores: Tensor, valid: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    cdt = torch.float32 if scores.dtype in _LOW else scores.dtype
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=cdt).to(out_dtype)


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, *, num_landmarks: int, pinv_iterations: int = 6,
                      key_padding_mask: Tensor | None = None, conv_weight: Tensor | None = None,
                      scale: float | None = None) -> Tensor:
    """Nyström attention in O(T·m·d); see ``naive.nystrom_attention`` for the arguments (``pinv_iterations`` must
    be a positive int here: the exact pinv is the oracle's reference only).

    Raises:
        ValueError: mismatched shapes or ``num_landmarks`` / ``pinv_iterations`` not positive.
    """
    b, h, t, d = q.shape
    hkv = k.shape[1]
    if k.shape != (b, hkv, t, d) or v.shape != k.shape or h % hkv:
        raise ValueError(f"q [B, H, T, d] and k, v [B, H_kv, T, d] with H_kv | H expected, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if num_landmarks < 1 or pinv_iterations is None or pinv_iterations < 1:
        raise ValueError(f"num_landmarks and pinv_iterations must be positive ints, got {num_landmarks}, "
                         f"{pinv_iterations}")
    m = num_landmarks
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    dt = q.dtype
    small = torch.float32 if dt in _LOW else dt  # dtype of the [m, m] algebra
    if hkv != h:
        k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    # q, k, v arrive as strided views of the fused QKV projection; against them every batched matmul (kᵀ above
    # all) makes a transposing copy (~0.7 GB/s): one plain row copy each here is far cheaper
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()

    avg, valid = averaging_matrix(key_padding_mask, b, t, m, q.device, dt)
    avg = avg[:, None]  # [B, 1, m, T]
    q_land = avg @ q  # Q̃ [B, H, m, d]
    k_land = avg @ k  # K̃
    valid = _nonempty(valid)[:, None, None, :]  # [B, 1, 1, m]
    keys = None if key_padding_mask is None else _nonempty(key_padding_mask)[:, None, None, :]

    f1 = _softmax(q @ (k_land * scale).transpose(-1, -2), valid, dt)  # [B, H, T, m]
    f3 = _softmax((q_land * scale) @ k.transpose(-1, -2), keys, dt)  # [B, H, m, T]
    f3v = f3 @ v  # [B, H, m, d]
    with no_autocast(q.device):
        ql, kl = q_land.to(small), k_land.to(small)
        a_s = torch.softmax((ql @ kl.transpose(-1, -2) * scale).masked_fill(~valid, float("-inf")), dim=-1)
        a_s = a_s * valid.transpose(-1, -2).to(small)  # zero rows of empty landmarks
        zf3v = iterative_pinv(a_s, pinv_iterations) @ f3v.to(small)  # [B, H, m, d]
    out = f1 @ zf3v.to(dt)  # [B, H, T, d]
    if conv_weight is not None:
        out = out + _conv_skip(v, conv_weight, key_padding_mask)
    return out


def _conv_skip(v: Tensor, weight: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """Depthwise convolution of V along T, kernel ``[H, K]`` shared by the d channels of a head: K shifted
    multiply-adds on a zero-padded copy (O(K·T·d); more accurate weight gradients than conv2d's backward, which
    accumulates the B·T·d products of a tap sequentially)."""
    if key_padding_mask is not None:
        v = v * key_padding_mask[:, None, :, None].to(v.dtype)
    t, ks = v.shape[2], weight.shape[1]
    vp = F.pad(v, (0, 0, ks // 2, ks // 2))  # [B, H, T + K - 1, d]
    w = weight.to(v.dtype)
    out = w[None, :, 0, None, None] * vp[:, :, 0:t]
    for o in range(1, ks):
        out = out + w[None, :, o, None, None] * vp[:, :, o:o + t]
    return out
