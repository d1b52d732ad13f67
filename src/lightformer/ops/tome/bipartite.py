"""ToMe's bipartite soft matching and size-weighted merge, vectorised over the batch (Bolya et al. 2023, "Token
Merging: Your ViT But Faster", ICLR 2023, Sec. 3 "Bipartite Soft Matching" and "Tracking Token Size"). The rules,
padding and ties included, are written out in ``naive.py`` (the oracle, a plain loop); this file computes the
same matching with one ``[B, ceil(T/2), floor(T/2)]`` score matmul, an argmax and a stable sort, and the same merge
with two scatter-adds.

Cost per call: O(B·T²·C/4) for the scores (a quarter of one attention score matrix over C channels) and O(B·T·C)
for the merge. The order of the surviving tokens is kept (rule 5), which a windowed mixer and RoPE positions need;
ToMe's own code concatenates the unmerged A tokens and B instead, which a pooled ViT does not mind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-12  # F.normalize's floor on a row norm: a zero metric row scores 0 against everything
#: scores are rounded to multiples of 1/SCORE_GRID, so exact duplicates tie in any summation order (naive.py, rule 2)
SCORE_GRID = 2.0 ** 16


@dataclass(frozen=True)
class Matching:
    """One merging step of B sequences of T tokens.

    Attributes:
        src: ``[B, r]`` int64, the A tokens merged away, best score first.
        dst: ``[B, r]`` int64, the B token each ``src`` token is merged into.
        keep: ``[B, T - r]`` int64, the surviving tokens in ascending (original) order.
    """

    src: Tensor
    dst: Tensor
    keep: Tensor


def max_merges(num_tokens: int, protect_first: bool = False) -> int:
    """The most tokens one bipartite step can remove from ``num_tokens``: every A token (ceil(T/2), minus the
    protected token 0), and none when there is no B token to merge into (T < 2)."""
    if num_tokens < 2:
        return 0
    return (num_tokens + 1) // 2 - int(protect_first)


def check_r(r: int, num_tokens: int, protect_first: bool = False) -> None:
    """Raise ``ValueError`` naming ``r`` unless ``0 <= r <= max_merges(num_tokens, protect_first)``."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r must be an int >= 0 (tokens merged away), got {r!r}")
    top = max_merges(num_tokens, protect_first)
    if r > top:
        why = "no token of set B to merge into" if num_tokens < 2 else \
            f"set A holds {(num_tokens + 1) // 2} of the {num_tokens} tokens" + \
            (", one of them the protected first (cls) token" if protect_first else "")
        raise ValueError(f"r={r} tokens cannot be merged away from {num_tokens}: {why}, so one bipartite step "
                         f"removes at most {top}; lower r")


def bipartite_soft_matching(metric: Tensor, r: int, *, valid: Tensor | None = None,
                            protect_first: bool = False) -> Matching:
    """ToMe's matching (rules 1-5 of ``naive.py``): tokens alternate into A (even) and B (odd); each A token's best
    B match by cosine similarity of ``metric``; the r best-scoring A tokens are merged into their matches.

    Args:
        metric: ``[B, T, C]`` floating (ToMe: the attention keys averaged over heads); scores are computed in its
            dtype (float32 for 16-bit inputs). No gradient flows through the matching.
        r: tokens to remove from each sequence, ``0 <= r <= max_merges(T, protect_first)``.
        valid: ``[B, T]`` bool, True = real token (None = all real). Padding tokens of A are removed first (they
            have size 0) and real tokens are never matched to padding tokens of B.
        protect_first: token 0 is never merged away (cls pooling reads it).

    Returns:
        ``Matching``: src, dst ``[B, r]``, keep ``[B, T - r]`` (int64).

    Raises:
        ValueError: ``r`` out of range, ``metric`` not 3-D, or ``valid`` not bool ``[B, T]``.
    """
    if metric.dim() != 3:
        raise ValueError(f"metric must be [B, T, C], got shape {tuple(metric.shape)}")
    b, t, _ = metric.shape
    check_r(r, t, protect_first)
    if valid is not None and (valid.shape != (b, t) or valid.dtype != torch.bool):
        raise ValueError(f"valid must be bool [B, T] = {[b, t]}, got {valid.dtype} {list(valid.shape)}")
    device = metric.device
    arange = torch.arange(t, device=device)
    if r == 0:
        empty = torch.zeros(b, 0, dtype=torch.int64, device=device)
        return Matching(src=empty, dst=empty, keep=arange.expand(b, t).clone())
    with torch.no_grad():
        m = metric.detach()
        if m.dtype in (torch.float16, torch.bfloat16):
            m = m.float()
        m = F.normalize(m, dim=-1, eps=_EPS)
        # contiguous A and B rows: a batched matmul on every-other-row views runs ~3x slower
        scores = m[:, 0::2].contiguous() @ m[:, 1::2].contiguous().transpose(1, 2)  # [B, |A|, |B|] cosines
        # rounded to the grid, kept in grid units (the ranking is the same): exact in fp32/fp64 for |score| <= 1
        scores.mul_(SCORE_GRID).round_()
        if valid is not None:
            scores.masked_fill_(~valid[:, None, 1::2], float("-inf"))  # real A never joins a padding B
            scores.masked_fill_(~valid[:, 0::2, None], float("inf"))  # padding A (size 0) goes first
        best_b = scores.argmax(dim=-1)  # [B, |A|]; the first (lowest) index among equal maxima
        best = scores.gather(-1, best_b[..., None])[..., 0]
        first = int(protect_first)
        order = torch.sort(best[:, first:], dim=-1, descending=True, stable=True).indices[:, :r] + first
        src = 2 * order  # A index -> token index
        dst = 2 * best_b.gather(1, order) + 1  # B index -> token index
        removed = torch.zeros(b, t, dtype=torch.bool, device=device).scatter_(1, src, True)
        keep = arange.expand(b, t)[~removed].view(b, t - r)  # row-major: each row stays ascending
    return Matching(src=src, dst=dst, keep=keep)


def merge_weighted(x: Tensor, size: Tensor, matching: Matching) -> tuple[Tensor, Tensor]:
    """Size-weighted merge (ToMe, "Tracking Token Size"): each surviving token that receives A tokens becomes
    ``(s_j·x_j + Σ s_a·x_a) / (s_j + Σ s_a)``; sizes add. A token that receives nothing, or only padding (size 0),
    is left bit for bit as it was. Differentiable in ``x``.

    Computed as the same average written as an update of the r receiving rows only,
    ``x_j + Σ_a (s_a / (s_j + Σ s_a))·(x_a − x_j)``: one out-of-place scatter-add and the gather of the survivors,
    instead of several passes over all ``[B, T, C]`` features (equal up to rounding).

    Args:
        x: ``[B, T, C]`` floating features (hidden states, or positions as ``[B, T, 1]``).
        size: ``[B, T]`` floating sizes (original tokens each one stands for; 0 = padding).
        matching: from ``bipartite_soft_matching`` on these T tokens.

    Returns:
        ``(x' [B, T - r, C], size' [B, T - r])``, dtypes of ``x`` and ``size``.

    Raises:
        ValueError: shapes that disagree with each other or with ``matching``.
    """
    if x.dim() != 3 or size.shape != x.shape[:2] or matching.keep.shape[0] != x.shape[0] \
            or matching.keep.shape[1] + matching.src.shape[1] != x.shape[1]:
        raise ValueError(f"x [B, T, C] = {tuple(x.shape)}, size [B, T] = {tuple(size.shape)} and the matching "
                         f"(keep {tuple(matching.keep.shape)}, src {tuple(matching.src.shape)}) disagree")
    c = x.shape[-1]
    keep = matching.keep[..., None].expand(-1, -1, c)
    if matching.src.shape[1] == 0:
        return x.gather(1, keep), size.gather(1, matching.keep)
    src_size = size.gather(1, matching.src)  # [B, r]
    total = size.scatter_add(1, matching.dst, src_size)  # [B, T]: sizes after the merge
    # each source's weight in its destination's average; 0 for padding (and for padding merged into padding)
    coef = (src_size / total.gather(1, matching.dst).clamp_min(_EPS)).to(x.dtype)[..., None]  # [B, r, 1]
    src = matching.src[..., None].expand(-1, -1, c)
    dst = matching.dst[..., None].expand(-1, -1, c)
    out = x.scatter_add(1, dst, coef * (x.gather(1, src) - x.gather(1, dst)))
    return out.gather(1, keep), total.gather(1, matching.keep)
