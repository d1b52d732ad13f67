"""Oracle of ToMe's bipartite soft matching and size-weighted merge (Bolya et al. 2023, "Token Merging: Your ViT
But Faster", ICLR 2023, Sec. 3 "Bipartite Soft Matching" steps 1-5 and "Tracking Token Size"), written as a plain
loop over sequences and tokens for reading. ``bipartite.py`` is the vectorised fast path; both follow these rules
exactly (ties included), so their matchings are equal and their merges equal up to summation order.

The rules, for one sequence of T tokens with metric rows ``m_t`` (ToMe: the attention keys averaged over heads):

1. Set A holds the tokens at even indices 0, 2, 4, ...; set B those at odd indices 1, 3, 5, ...
2. The edge a -> b scores the cosine similarity ``m_a·m_b / (max(|m_a|, ε)·max(|m_b|, ε))``, ε = 1e-12 (a zero
   metric row scores 0 against everything), rounded to a multiple of 2^-16 (half to even): exact duplicates, whose
   cosine is 1 only up to the rounding of a summation order, then tie, and the tie breaks by index (rules 3-4) the
   same way in any summation order, batch shape or dtype; closer scores are not worth telling apart. Padding
   (``valid`` False) changes the scores, never the features: a padding token of A scores ``+inf`` to every b (it
   is removed first: its size is 0, so removing it costs nothing), and a real token of A scores ``-inf`` to a
   padding token of B.
3. Each A token keeps its best edge: the highest score, the lowest B index among equal scores.
4. The A tokens (minus token 0 when ``protect_first``: the cls token of cls pooling) are ranked by their best
   score, highest first, the lower index first among equal scores; the first r are merged into their best B
   token. At most |A| tokens can go, so r <= ceil(T/2) (minus the protected one), and r > 0 needs T >= 2.
5. The surviving T - r tokens keep their original order.

Merge ("Tracking Token Size"): a surviving token j that receives the set S_j of A tokens becomes the size-weighted
average ``(s_j·x_j + Σ_{a∈S_j} s_a·x_a) / (s_j + Σ_{a∈S_j} s_a)`` and its size ``s_j + Σ s_a``; where the
received size is 0 (nothing received, or only padding tokens of size 0) the token is left exactly as it was. A
padding token has size 0, so it never changes a real token and never counts in a size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bipartite import SCORE_GRID, Matching, check_r


def _score(a: Tensor, b: Tensor, eps: float = 1e-12) -> float:
    cosine = float(torch.dot(a, b)) / (max(float(a.norm()), eps) * max(float(b.norm()), eps))
    return round(cosine * SCORE_GRID) / SCORE_GRID  # Python's round: half to even, as torch.round


def bipartite_soft_matching(metric: Tensor, r: int, *, valid: Tensor | None = None,
                            protect_first: bool = False) -> Matching:
    """The matching of rules 1-5 (module docstring), one sequence and one A token at a time.

    Args:
        metric: ``[B, T, C]`` floating, the similarity features (ToMe: keys averaged over heads).
        r: tokens to remove from each sequence, ``0 <= r <= ceil(T/2) - protect_first``.
        valid: ``[B, T]`` bool, True = real token; None = all real.
        protect_first: token 0 is never merged away (cls pooling reads it).

    Returns:
        ``Matching`` (src, dst ``[B, r]`` int64 in rank order, keep ``[B, T - r]`` int64 ascending).

    Raises:
        ValueError: r out of range or shapes that disagree (see ``check_r``).
    """
    metric = metric.detach().double()
    b_size, t, _ = metric.shape
    check_r(r, t, protect_first)
    if valid is not None and (valid.shape != (b_size, t) or valid.dtype != torch.bool):
        raise ValueError(f"valid must be bool [B, T] = {[b_size, t]}, got {valid.dtype} {list(valid.shape)}")
    set_a, set_b = list(range(0, t, 2)), list(range(1, t, 2))
    srcs, dsts, keeps = [], [], []
    for n in range(b_size):
        real = [True] * t if valid is None else [bool(v) for v in valid[n]]
        best: dict[int, tuple[float, int]] = {}
        for a in set_a:
            top_score, top_b = -math.inf, set_b[0] if set_b else -1
            first = True
            for b in set_b:
                if not real[a]:
                    score = math.inf
                elif not real[b]:
                    score = -math.inf
                else:
                    score = _score(metric[n, a], metric[n, b])
                if first or score > top_score:  # strict: the lowest index wins a tie
                    top_score, top_b, first = score, b, False
            best[a] = (top_score, top_b)
        candidates = [a for a in set_a if not (protect_first and a == 0)]
        # highest score first, lower index first among equal scores
        ranked = sorted(candidates, key=lambda a: (-best[a][0], a))
        chosen = ranked[:r]
        srcs.append(chosen)
        dsts.append([best[a][1] for a in chosen])
        keeps.append([i for i in range(t) if i not in set(chosen)])
    as_long = lambda rows, width: torch.tensor(rows, dtype=torch.int64).view(b_size, width)  # noqa: E731
    return Matching(src=as_long(srcs, r), dst=as_long(dsts, r), keep=as_long(keeps, t - r))


def merge_weighted(x: Tensor, size: Tensor, matching: Matching) -> tuple[Tensor, Tensor]:
    """The merge of the module docstring, one sequence and one surviving token at a time.

    Args:
        x: ``[B, T, C]`` features; size: ``[B, T]`` floating token sizes (0 = padding).
        matching: from ``bipartite_soft_matching`` on these T tokens.

    Returns:
        ``(x' [B, T - r, C], size' [B, T - r])`` in the dtypes of ``x`` and ``size``.
    """
    rows_x, rows_s = [], []
    for n in range(x.shape[0]):
        received: dict[int, list[int]] = {}
        for a, b in zip(matching.src[n].tolist(), matching.dst[n].tolist()):
            received.setdefault(b, []).append(a)
        out_x, out_s = [], []
        for j in matching.keep[n].tolist():
            incoming = received.get(j, [])
            added = sum(float(size[n, a]) for a in incoming)
            total = float(size[n, j]) + added
            if added > 0:
                weighted = size[n, j].to(x.dtype) * x[n, j]
                for a in incoming:
                    weighted = weighted + size[n, a].to(x.dtype) * x[n, a]
                out_x.append(weighted / total)
            else:
                out_x.append(x[n, j])
            out_s.append(total)
        rows_x.append(torch.stack(out_x) if out_x else x.new_zeros(0, x.shape[-1]))
        rows_s.append(torch.tensor(out_s, dtype=size.dtype))
    return torch.stack(rows_x), torch.stack(rows_s)
