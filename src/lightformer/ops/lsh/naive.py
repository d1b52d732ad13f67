"""Oracle of Reformer's LSH attention (Kitaev, Kaiser, Levskaya 2020, "Reformer: The Efficient Transformer",
Sec. 2-3), written plainly from the buckets: for each round a dense ``[T, T]`` mask of who may attend to whom.

Conventions (shared with the fast path ``chunked``):
    qk: ``[B, H, T, d]`` shared queries/keys; keys are the normalised queries k_j = qk_j / ‖qk_j‖ (Sec. 2,
        "Shared-QK attention"); scores s_ij = qk_i · k_j / sqrt(d).
    v: ``[B, H, T, d]``; buckets: ``[B, H, n_hashes, T]`` from ``hashing.lsh_buckets``.
    key_padding_mask: ``[B, T]`` bool, True = real token.

Round r (Sec. 2 "Hashing attention", Fig. 2): sort the tokens by (bucket, position); cut the sorted order into
chunks of ``bucket_size``; query i may attend to key j iff
    * j has the same bucket as i in this round,
    * j's chunk is i's chunk or the one before it (within the round; the first chunk has no predecessor),
      where, when causal, the chunks are *bucket-aligned*: every bucket starts a new chunk, i.e. the chunk of a
      token is (number of earlier tokens in its bucket) // bucket_size. With the paper's unaligned chunks the
      boundaries inside a bucket move with the number of tokens hashed to lower buckets anywhere in the sequence,
      so a past token's key set would depend on future tokens; aligned chunks make the layer strictly causal
      (it costs at most one partly empty chunk per bucket in the fast path),
    * j is a real token, and, when causal, position(j) <= position(i).
Self-attention (j = i) is always allowed but scored s_ii − 10⁵ (Sec. 2 "Causal masking for shared-QK attention"
uses the same 10⁵ in the mask m_{i,j} of App. A): a token effectively attends to itself only when it has no other
valid key in the round, and every row has at least one entry, so no row is empty.

Rounds are combined by their log-sum-exp (Sec. 2 "Multi-round LSH attention", App. A):
    o_i = Σ_r exp(z_i^(r) − z_i) o_i^(r),   z_i^(r) = logsumexp_{j ∈ P_i^(r)} s_ij,   z_i = logsumexp_r z_i^(r),
which equals one softmax over the union of the rounds' key sets counted with multiplicity. The paper's optional
de-duplication term N_{i,j} (App. A) is not applied: a key shared by several rounds counts once per round.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SELF_PENALTY = 1e5  # subtracted from s_ii (Reformer App. A, m_{i,j} = 10⁵ for i = j)


def shared_keys(qk: Tensor) -> Tensor:
    """k_j = qk_j / ‖qk_j‖ (a zero vector stays zero)."""
    return qk / qk.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def round_mask(bucket: Tensor, bucket_size: int, *, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
    """Who may attend to whom in one round: ``bucket [B, H, T]`` -> ``[B, H, T, T]`` bool (query, key),
    the diagonal included (see module docstring)."""
    b, h, t = bucket.shape
    pos = torch.arange(t, device=bucket.device)
    same_bucket = bucket[..., :, None] == bucket[..., None, :]  # [B, H, T, T]
    if causal:
        # bucket-aligned chunks: chunk = (rank of the token inside its bucket) // bucket_size
        rank = (same_bucket & (pos[None, :] < pos[:, None])).sum(dim=-1)  # earlier tokens of the same bucket
        chunk = rank // bucket_size  # [B, H, T]
    else:
        order = torch.argsort(bucket * t + pos, dim=-1)  # sorted slot -> token, by (bucket, position)
        slot = torch.argsort(order, dim=-1)  # token -> sorted slot
        chunk = slot // bucket_size  # [B, H, T]
    own_or_previous = (chunk[..., None, :] == chunk[..., :, None]) | (chunk[..., None, :] == chunk[..., :, None] - 1)
    allowed = same_bucket & own_or_previous
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    if causal:
        allowed = allowed & (pos[None, :] <= pos[:, None])
    return allowed | torch.eye(t, dtype=torch.bool, device=bucket.device)


def lsh_attention(qk: Tensor, v: Tensor, buckets: Tensor, *, bucket_size: int, causal: bool = False,
                  key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Multi-round LSH attention with dense masks (O(n_hashes·T²) memory). Returns ``[B, H, T, d]``."""
    t = qk.shape[2]
    scale = 1.0 / math.sqrt(qk.shape[-1]) if scale is None else scale
    k = shared_keys(qk)
    scores = torch.einsum("bhid,bhjd->bhij", qk, k) * scale  # [B, H, T, T]
    scores = scores - SELF_PENALTY * torch.eye(t, dtype=scores.dtype, device=scores.device)
    outs, lses = [], []
    for r in range(buckets.shape[2]):
        allowed = round_mask(buckets[:, :, r], bucket_size, causal=causal, key_padding_mask=key_padding_mask)
        s = scores.masked_fill(~allowed, float("-inf"))
        lses.append(torch.logsumexp(s, dim=-1))  # z_i^(r) [B, H, T]
        outs.append(torch.softmax(s, dim=-1) @ v)  # o_i^(r) [B, H, T, d]
    lse = torch.stack(lses)  # [R, B, H, T]
    weights = torch.softmax(lse, dim=0)  # exp(z^(r) − z)
    out = (weights[..., None] * torch.stack(outs)).sum(dim=0)
    return out.to(qk.dtype)
