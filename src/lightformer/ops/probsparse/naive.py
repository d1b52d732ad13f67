"""ProbSparse self-attention (Zhou et al. 2021, "Informer: Beyond Efficient Transformer for Long Sequence
Time-Series Forecasting", Sec. 3.1, Eq. 3-4, Lemma 1): the query selection, shared by the oracle and the fast
path, and the oracle, written for reading.

Boundary with the fast path. The selection is a discrete choice (no gradient flows through it); both paths call
``sparsity_measure`` and ``select_queries`` below, so they select the same queries, and differ only in how they
compute the attention of the selected ("active") queries and the mean of V for the others ("lazy" queries).

Sparsity measure (Eq. 4 with the max-mean approximation of Lemma 1, on sampled keys as in Sec. 3.1):

    M̄(q_i) = max_{j in S_i} q_i·k_j/sqrt(d) − (1/|S_i|) Σ_{j in S_i} q_i·k_j/sqrt(d)

S_i: s = min(n, max(1, ceil(sample_factor · ln n))) keys drawn uniformly with replacement among the n real tokens of
the sequence. Fixed seeded sampling, per length: the real queries, in order, form groups of ``GROUP`` = 64 that share
one draw (so the scores are a matmul); the draw for a sequence with n real tokens depends only on (seed, n, causal),
made by ``torch.Generator().manual_seed(seed + 1000003·n + causal)``, ranks counted among the real tokens (so a
right-padded sequence samples exactly as its unpadded self). Causal: group g draws from the ranks < the group's
end and each query keeps only the samples at or before itself (a query left with none gets M̄ = 0).

Selection, with u = min(n, max(1, ceil(factor · ln n))) (Sec. 3.1, "u = c·ln L_Q"):
    bidirectional: the u real queries of largest M̄ (``torch.topk``).
    causal: Informer ranks all queries at once, which lets future tokens decide whether a past query is active (a
        leak the causality contract forbids). Here query i is a candidate when fewer than u real queries j < i have
        M̄_j >= M̄_i (it is in the top-u of its prefix, ties going to the earlier query); the first budget = min(n, ceil(u · (1 + ln(n / u))))
        candidates are active (that is the expected number of prefix-top-u records for exchangeable M̄). Both
        depend only on tokens <= i.
Active queries: exact softmax attention over the allowed keys (causal mask, key padding). Lazy queries: the mean of
V over the allowed real keys (cumulative mean up to the query when causal).

Conventions: q, k, v ``[B, H, T, d]``; key_padding_mask ``[B, T]`` bool (True = real); output ``[B, H, T, d]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..amp import no_autocast

GROUP = 64


def top_count(n: int, factor: float) -> int:
    """u = min(n, max(1, ceil(factor · ln n)))."""
    return min(n, max(1, math.ceil(factor * math.log(n)))) if n > 0 else 0


def causal_budget(n: int, u: int) -> int:
    """Active queries allowed in causal mode: min(n, ceil(u · (1 + ln(n / u))))."""
    return min(n, math.ceil(u * (1.0 + math.log(n / u)))) if u > 0 else 0


def sample_ranks(n: int, s: int, causal: bool, seed: int) -> Tensor:
    """Sampled key ranks ``[ceil(n / GROUP), s]`` for a sequence of n real tokens (see the module docstring)."""
    groups = -(-n // GROUP)
    g = torch.Generator().manual_seed(seed + 1000003 * n + int(causal))
    u = torch.rand(groups, s, generator=g, dtype=torch.float64)
    hi = torch.full((groups, 1), float(n), dtype=torch.float64)
    if causal:  # ranks < the group's end
        hi = torch.clamp((torch.arange(groups, dtype=torch.float64)[:, None] + 1) * GROUP, max=n)
    return torch.minimum((u * hi).long(), hi.long() - 1)


@torch.no_grad()
def sparsity_measure(q: Tensor, k: Tensor, *, key_padding_mask: Tensor | None, sample_factor: float, causal: bool,
                     seed: int) -> Tensor:
    """M̄ of every query ``[B, H, T]`` (float32, or float64 for float64 inputs); −∞ at padded queries."""
    # the measure decides a discrete choice: keep it in float32 under autocast, on whatever device q is
    with no_autocast(q.device):
        return _sparsity_measure(q, k, key_padding_mask=key_padding_mask, sample_factor=sample_factor,
                                 causal=causal, seed=seed)


def _sparsity_measure(q: Tensor, k: Tensor, *, key_padding_mask: Tensor | None, sample_factor: float,
                      causal: bool, seed: int) -> Tensor:
    b, h, t, d = q.shape
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.full((b, h, t), float("-inf"), dtype=cd, device=q.device)
    scale = 1.0 / math.sqrt(d)
    for i in range(b):  # each sequence samples according to its own real length
        pos = (torch.arange(t, device=q.device) if key_padding_mask is None
               else key_padding_mask[i].nonzero().squeeze(-1))  # [n] real positions
        n = pos.numel()
        if n == 0:
            continue
        s = min(n, max(1, math.ceil(sample_factor * math.log(n))))
        ranks = sample_ranks(n, s, causal, seed).to(q.device)  # [G, s]
        groups = ranks.shape[0]
        qi = (q[i] if key_padding_mask is None else q[i][:, pos]).to(cd)  # [H, n, d]
        qi = torch.nn.functional.pad(qi, (0, 0, 0, groups * GROUP - n)).view(h, groups, GROUP, d)
        ks = (k[i] if key_padding_mask is None else k[i][:, pos]).to(cd)[:, ranks]  # [H, G, s, d]
        scores = qi @ ks.transpose(-1, -2) * scale  # [H, G, GROUP, s]
        if causal:
            rank_q = torch.arange(groups * GROUP, device=q.device).view(groups, GROUP, 1)
            keep = ranks[:, None, :] <= rank_q  # [G, GROUP, s]
            cnt = keep.sum(-1)  # [G, GROUP]
            mx = scores.masked_fill(~keep, float("-inf")).amax(-1)
            mean = scores.masked_fill(~keep, 0.0).sum(-1) / cnt.clamp_min(1)
            m = torch.where(cnt > 0, mx - mean, torch.zeros((), dtype=cd, device=q.device))
        else:
            m = scores.amax(-1) - scores.mean(-1)
        out[i][:, pos] = m.reshape(h, groups * GROUP)[:, :n]
    return out


@torch.no_grad()
def select_queries(measure: Tensor, counts: list[int], *, factor: float, causal: bool) -> tuple[Tensor, Tensor]:
    """The active queries.

    Args:
        measure: ``[B, H, T]`` M̄ (−∞ at padded queries).
        counts: real tokens n of each sequence.
    Returns:
        idx ``[B, H, A]`` positions of the active queries (in increasing position order when causal) and valid
        ``[B, H, A]`` bool (slots past a sequence's own number of active queries are False; their idx are distinct
        positions that must be ignored).
    """
    b, h, t = measure.shape
    us = [top_count(n, factor) for n in counts]
    if not causal:
        a = max(us)
        idx = measure.topk(a, dim=-1).indices  # [B, H, A]
        valid = torch.arange(a, device=measure.device)[None, :] < torch.tensor(us, device=measure.device)[:, None]
        return idx, valid[:, None, :].expand(b, h, a)
    # prefix top-u: count, for each query, the earlier real queries with a measure >= its own; only the u largest of
    # the earlier blocks matter, so blocks of queries are compared pairwise plus against a running top-u
    umax = max(max(us), 1)
    block = 512  # few iterations (each costs a handful of ops); the pairwise part is T·512 comparisons
    top = torch.full((b, h, umax), float("-inf"), dtype=measure.dtype, device=measure.device)
    earlier_all = torch.ones(block, block, dtype=torch.bool, device=measure.device).tril(-1)  # j < i
    counts_above = []
    for j0 in range(0, t, block):
        mb = measure[..., j0:j0 + block]  # [B, H, L]
        lb = mb.shape[-1]
        earlier = earlier_all[:lb, :lb]
        within = ((mb[..., None, :] >= mb[..., :, None]) & earlier).sum(-1)  # [B, H, L]
        cross = (top[..., None, :] >= mb[..., :, None]).sum(-1)
        counts_above.append(within + cross)
        top = torch.cat([top, mb], dim=-1).topk(umax, dim=-1).values
    above = torch.cat(counts_above, dim=-1)  # [B, H, T]
    u_b = torch.tensor(us, device=measure.device)[:, None, None]
    cand = (above < u_b) & torch.isfinite(measure)
    budget = torch.tensor([causal_budget(n, u) for n, u in zip(counts, us)], device=measure.device)[:, None, None]
    active = cand & (cand.cumsum(-1) <= budget)
    a = max(int(active.sum(-1).max()), 1)
    idx = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[..., :a]  # active first, by position
    valid = torch.arange(a, device=measure.device) < active.sum(-1, keepdim=True)
    return idx, valid


def active_mask(idx: Tensor, valid: Tensor, t: int) -> Tensor:
    """``[B, H, T]`` bool: True at the active queries."""
    mask = torch.zeros(*idx.shape[:2], t, dtype=torch.bool, device=idx.device)
    return mask.scatter(-1, idx, valid)


def probsparse_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor, *, causal: bool,
                         key_padding_mask: Tensor | None = None) -> Tensor:
    """The oracle: dense softmax attention for every query, then the mean of V at the lazy ones. O(T²·d)."""
    b, h, t, d = q.shape
    allowed = torch.ones(t, t, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]  # [B, 1, T, T]
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~allowed, float("-inf"))
    empty = ~allowed.any(-1, keepdim=True)
    attn = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty | ~allowed, 0.0) @ v
    weights = allowed.to(v.dtype)
    lazy = (weights @ v) / weights.sum(-1, keepdim=True).clamp_min(1.0)  # mean of the allowed V
    return torch.where(active_mask(idx, valid, t)[..., None], attn, lazy).to(q.dtype)
