"""Oracles of the low-rank attention family, written for reading (O(T²) allowed, float64-safe).

Linformer (Wang, Li, Khabsa, Fang, Ma 2020, "Linformer: Self-Attention with Linear Complexity", Eq. 7):

    head_i = softmax( Q W_i^Q (E_i K W_i^K)ᵀ / sqrt(d) ) · F_i V W_i^V                        (7)

with E_i, F_i ``[k, n]`` projecting the n keys / values along the *sequence* to k = ``proj_len`` rows.

Nyströmformer (Xiong, Zeng, Chakraborty, Tan, Fung, Li, Singh 2021, "Nyströmformer: A Nyström-Based Algorithm for
Approximating Self-Attention", Eq. 14-16, Alg. 1): with landmarks Q̃, K̃ ``[m, d]`` (segment means of Q and K),

    Ŝ V = softmax(Q K̃ᵀ/√d) · (softmax(Q̃ K̃ᵀ/√d))⁺ · softmax(Q̃ Kᵀ/√d) · V                        (14)

where ⁺ is the Moore-Penrose pseudo-inverse, approximated by the iteration of Razavi et al. 2014 (Eq. 16)

    Z_0 = A_Sᵀ / (‖A_S‖₁ ‖A_S‖_∞),   Z_{j+1} = ¼ Z_j (13I − A_S Z_j (15I − A_S Z_j (7I − A_S Z_j))).      (16)

Conventions: q ``[B, H, T, d]``; k, v ``[B, H_kv, T, d]`` (H_kv divides H, grouped-query heads share k/v);
key_padding_mask ``[B, T]`` bool, True = real token. Outputs ``[B, H, T, d]`` in the dtype of q.

Landmark segments (Nyström). The paper takes m segments of T/m consecutive tokens and requires m | T. Here the
n real tokens of each sequence (padding excluded) are split into m contiguous, balanced segments: the real token
of rank r (0-based, counted over real tokens only) belongs to segment ⌊r·m/n⌋, so segments hold ⌊n/m⌋ or ⌈n/m⌉
tokens and every real token is used (no truncation). When n < m only n segments are non-empty; the empty ones are
*masked landmarks*: excluded from every softmax, and their rows and columns of A_S are zero, so that both the exact
and the iterative pseudo-inverse act on the block of valid landmarks only (a zero block stays zero under Eq. 16).
A sequence with no real token at all (its outputs are unspecified) treats everything as valid to stay finite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _heads(kv: Tensor, h: int) -> Tensor:
    """``[B, H_kv, ...]`` -> ``[B, H, ...]``: each key/value head serves H/H_kv consecutive query heads."""
    return kv.repeat_interleave(h // kv.shape[1], dim=1) if kv.shape[1] != h else kv


# -- Linformer ----------------------------------------------------------------------------------------------------
def linformer_attention(q: Tensor, k: Tensor, v: Tensor, e: Tensor, f: Tensor, *,
                        key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Linformer attention, Eq. 7, written plainly.

    Args:
        q: ``[B, H, T, d]``; k, v: ``[B, H_kv, T, d]``.
        e, f: key / value projections ``[1 or H_kv, k, L]`` with L >= T; the first T columns are used (a sequence
            shorter than the projections' length is the prefix of a longer one). One row block per kv head, or one
            shared by all heads.
        key_padding_mask: ``[B, T]``; padded keys and values are zeroed *before* the projection, so they contribute
            nothing to the projected keys (the result at real positions equals the unpadded run).
        scale: score scale, default ``1/sqrt(d)``.

    Returns:
        ``[B, H, T, d]``.
    """
    t = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :, None].to(k.dtype)  # [B, 1, T, 1]
        k, v = k * keep, v * keep
    e_t, f_t = e[:, :, :t].to(k.dtype), f[:, :, :t].to(v.dtype)  # [1|H_kv, k, T]
    k_proj = torch.einsum("hpt,bhtd->bhpd", e_t, k)  # E K: [B, H_kv, k, d]
    v_proj = torch.einsum("hpt,bhtd->bhpd", f_t, v)  # F V: [B, H_kv, k, d]
    h = q.shape[1]
    scores = torch.einsum("bhtd,bhpd->bhtp", q, _heads(k_proj, h)) * scale  # [B, H, T, k]
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhtp,bhpd->bhtd", weights, _heads(v_proj, h)).to(q.dtype)


# -- Nyströmformer ------------------------------------------------------------------------------------------------
def segment_ids(key_padding_mask: Tensor | None, b: int, t: int, m: int, device: torch.device) -> Tensor:
    """Landmark segment of every token ``[B, T]`` (int64): ⌊rank·m/n⌋ for real tokens, ``m`` for padded ones.

    Written token by token for clarity (the fast path vectorises it)."""
    mask = torch.ones(b, t, dtype=torch.bool, device=device) if key_padding_mask is None else key_padding_mask
    ids = torch.full((b, t), m, dtype=torch.long, device=device)
    for i in range(b):
        n = int(mask[i].sum())
        rank = 0
        for j in range(t):
            if mask[i, j]:
                ids[i, j] = rank * m // n
                rank += 1
    return ids


def landmarks(x: Tensor, ids: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Segment means ``[B, H, m, d]`` of ``x`` ``[B, H, T, d]`` and the landmark validity ``[B, m]`` (non-empty)."""
    b, h, _, d = x.shape
    means = x.new_zeros(b, h, m, d)
    valid = torch.zeros(b, m, dtype=torch.bool, device=x.device)
    for i in range(b):
        for s in range(m):
            members = ids[i] == s
            if members.any():
                means[i, :, s] = x[i][:, members].mean(dim=1)
                valid[i, s] = True
    return means, valid


def _nonempty(valid: Tensor) -> Tensor:
    """A row with nothing valid (fully padded sequence, outputs unspecified) treats everything as valid."""
    return valid | ~valid.any(dim=-1, keepdim=True)


def _masked_softmax(scores: Tensor, valid: Tensor) -> Tensor:
    """softmax over the last axis with invalid columns (``valid`` broadcastable, False) at weight 0."""
    return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``a`` ``[..., m, m]`` by Eq. 16 (Razavi et al. 2014), ``iterations`` steps.

    Z_0 = aᵀ / (‖a‖₁ ‖a‖_∞) with the norms (max absolute column / row sum) taken per matrix, so that batch members
    and heads do not influence each other. Converges to a⁺ for any a (the scaling keeps ‖I − a Z_0‖ < 1 on the
    range of a); the entries of A_S are positive softmax weights so the norms are plain sums.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    col = a.abs().sum(dim=-2).amax(dim=-1)  # ‖a‖₁  [...]
    row = a.abs().sum(dim=-1).amax(dim=-1)  # ‖a‖_∞ [...]
    z = a.transpose(-1, -2) / (col * row).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def depthwise_conv_skip(v: Tensor, weight: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """The paper's optional skip: a depthwise convolution of V along the sequence, one kernel per head
    (Nyströmformer Sec. 4 / Alg. 1 "residual connection of a depthwise convolution").

    Args:
        v: ``[B, H, T, d]``; weight ``[H, K]`` with K odd (output position t reads t - K//2 ... t + K//2; positions
            outside [0, T) and padded tokens read zero).
    """
    if key_padding_mask is not None:
        v = v * key_padding_mask[:, None, :, None].to(v.dtype)
    t, half = v.shape[2], weight.shape[1] // 2
    out = torch.zeros_like(v)
    for o in range(weight.shape[1]):
        shift = o - half  # reads v[t + shift]
        lo, hi = max(0, -shift), min(t, t - shift)
        if lo < hi:
            out[:, :, lo:hi] += weight[None, :, o, None, None].to(v.dtype) * v[:, :, lo + shift:hi + shift]
    return out


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, *, num_landmarks: int, pinv_iterations: int | None = 6,
                      key_padding_mask: Tensor | None = None, conv_weight: Tensor | None = None,
                      scale: float | None = None) -> Tensor:
    """Nyström attention, Eq. 14, as the explicit product of the three softmax matrices (``[T, T]`` materialised).

    Args:
        q: ``[B, H, T, d]``; k, v: ``[B, H_kv, T, d]``.
        num_landmarks: m; segments as in the module docstring.
        pinv_iterations: steps of Eq. 16, or ``None`` for the exact ``torch.linalg.pinv`` (the reference the
            iteration converges to).
        key_padding_mask: ``[B, T]``; padded keys are excluded from the landmark means and from the key softmax.
        conv_weight: ``[H, K]`` depthwise convolution skip on V (added to the output), or None.

    Returns:
        ``[B, H, T, d]``.
    """
    b, h, t, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    k, v = _heads(k, h), _heads(v, h)
    ids = segment_ids(key_padding_mask, b, t, num_landmarks, q.device)
    q_land, valid = landmarks(q, ids, num_landmarks)  # Q̃ [B, H, m, d], valid [B, m]
    k_land, _ = landmarks(k, ids, num_landmarks)  # K̃
    valid = _nonempty(valid)[:, None, None, :]  # [B, 1, 1, m]
    keys = torch.ones(b, t, dtype=torch.bool, device=q.device) if key_padding_mask is None else key_padding_mask
    keys = _nonempty(keys)[:, None, None, :]  # [B, 1, 1, T]

    f1 = _masked_softmax(q @ k_land.transpose(-1, -2) * scale, valid)  # [B, H, T, m]
    a_s = _masked_softmax(q_land @ k_land.transpose(-1, -2) * scale, valid)  # A_S [B, H, m, m]
    a_s = a_s * valid.transpose(-1, -2)  # zero rows of empty landmarks (columns already 0)
    f3 = _masked_softmax(q_land @ k.transpose(-1, -2) * scale, keys)  # [B, H, m, T]
    z = torch.linalg.pinv(a_s) if pinv_iterations is None else iterative_pinv(a_s, pinv_iterations)
    s_hat = f1 @ z @ f3  # Ŝ, the [T, T] Nyström approximation of softmax(Q Kᵀ/√d)
    out = s_hat @ v
    if conv_weight is not None:
        out = out + depthwise_conv_skip(v, conv_weight, key_padding_mask)
    return out.to(q.dtype)
