"""Angular locality-sensitive hashing of Reformer (Kitaev, Kaiser, Levskaya 2020, "Reformer: The Efficient
Transformer", Sec. 2 "Locality sensitive hashing", after Andoni et al. 2015):

    h(x) = argmax([x R ; −x R]),      R: [d, n_buckets/2] with i.i.d. N(0, 1) entries, one R per round and head.

Shared by the oracle (``naive``) and the fast path (``chunked``): both attend within the buckets computed here,
so they agree exactly; the hash has no gradient.

* Number of buckets: chosen so that the average bucket holds ``bucket_size`` tokens (Sec. 2), rounded up to an
  even count: ``n_buckets(n) = max(2, 2·ceil(n / (2·bucket_size)))`` where n is the number of *real* tokens of the
  sequence (padding excluded, so a padded batch hashes each sequence as its unpadded run would).
* Rotations: drawn from a fixed integer seed, not from the global RNG, so forward, oracle and repeated calls agree.
  Because n_buckets grows with T, the columns of R are drawn in blocks of 16, block j from a generator seeded by
  ``(seed, j)``: the first c columns are the same for every T, a short sequence uses a prefix of a longer one's R.
* Padded tokens get the bucket ``sentinel`` (larger than every real bucket) so they sort after all real tokens.

Cost: O(n_hashes·T·d·n_buckets) = O(n_hashes·T²·d / bucket_size) for the projection x R (computed in slices of T to
bound memory); with bucket_size = 64 this stays below the attention cost up to T ≈ 2·64² = 8192 per round-head.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from ..amp import no_autocast

_BLOCK = 16
_LOW = (torch.bfloat16, torch.float16)


def n_buckets(n: int, bucket_size: int) -> int:
    """Even bucket count whose average bucket holds ``bucket_size`` of ``n`` tokens (at least 2)."""
    return max(2, 2 * math.ceil(n / (2 * bucket_size)))


def rotations(seed: int, n_hashes: int, heads: int, d: int, half: int, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> Tensor:
    """Random rotations ``[n_hashes, heads, d, half]``, prefix-stable in ``half`` (see module docstring)."""
    blocks = []
    for j in range(math.ceil(half / _BLOCK)):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + j) % (2 ** 63))
        blocks.append(torch.randn(n_hashes, heads, d, _BLOCK, generator=g, dtype=torch.float64))
    return torch.cat(blocks, dim=-1)[..., :half].to(device=device, dtype=dtype)


def lsh_buckets(x: Tensor, *, seed: int, n_hashes: int, bucket_size: int,
                key_padding_mask: Tensor | None = None, max_elements: int = 1 << 24) -> Tensor:
    """Bucket of every token in every round.

    Args:
        x: ``[B, H, T, d]`` shared query/keys (the hash is scale invariant, so x or x/‖x‖ give the same buckets).
        seed: integer seed of the rotations.
        n_hashes: rounds of hashing.
        bucket_size: average tokens per bucket (sets n_buckets per sequence from its number of real tokens).
        key_padding_mask: ``[B, T]`` bool, True = real token; padded tokens get the sentinel bucket.
        max_elements: bound on the elements of one slice of x R (memory), not on the result.

    Returns:
        ``[B, H, n_hashes, T]`` int64 buckets in ``[0, n_buckets(n_b))`` for real tokens, ``sentinel`` =
        ``n_buckets(T)`` for padded ones. Computed in float32 (float64 for float64 inputs), autocast off.
    """
    b, h, t, d = x.shape
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    real = [t] * b if key_padding_mask is None else key_padding_mask.sum(dim=1).tolist()
    halves = [n_buckets(max(int(n), 1), bucket_size) // 2 for n in real]
    sentinel = n_buckets(t, bucket_size)
    rot = rotations(seed, n_hashes, h, d, max(halves), dtype=dt, device=x.device)  # [R, H, d, half_max]
    out = torch.empty(b, h, n_hashes, t, dtype=torch.long, device=x.device)
    with torch.no_grad(), no_autocast(x.device):
        for half in sorted(set(halves)):
            rows = [i for i, hv in enumerate(halves) if hv == half]
            xs = x[rows].to(dt)  # [b', H, T, d]
            r = rot[..., :half]
            step = max(1, max_elements // max(1, len(rows) * h * n_hashes * half))
            for s in range(0, t, step):
                proj = torch.einsum("bhtd,rhdk->bhrtk", xs[:, :, s:s + step], r)  # x R [b', H, R, t', half]
                mx, imx = proj.max(dim=-1)
                mn, imn = proj.min(dim=-1)
                # argmax over [xR ; −xR]: the largest of max(xR) and max(−xR) = −min(xR); ties go to xR (first half)
                out[rows, :, :, s:s + step] = torch.where(mx >= -mn, imx, imn + half)
        if key_padding_mask is not None:
            out.masked_fill_(~key_padding_mask[:, None, None, :], sentinel)
    return out
