"""GCNet's context modelling (attention pooling), fast path; same signature and semantics as
``naive.context_pool``, plus ``context_pool_step`` for decoding.

    a_j = W_k·x_j,    c = Σ_j e^{a_j} x_j / Σ_j e^{a_j}                      (Cao et al. 2019, Eq. 4)

Non-causal: one masked softmax over the positions and one [1, T] @ [T, D] product per sequence, O(T·D).

Causal (our extension, c_t over j <= t), chunked, O(T·L·D) for chunks of L tokens:
  * inside chunk c, P[t, j] = e^{a_j − m_t} for j <= t, with m_t the running max of the scores up to t (including
    the earlier chunks and the initial state), so every entry is <= 1; P @ x_chunk is one matmul per chunk;
  * the earlier chunks enter as the carried state (M, l, u) = (their max, Σ e^{a − M}, Σ e^{a − M} x), rescaled by
    e^{M − m_t} <= 1; each chunk is summarised relative to its own max (e^{a_j − max_c} <= 1), and the carries are
    the same two-level computation one level up (``_carries``: a masked matrix inside groups of G chunks, a loop
    over the T/(L·G) groups), so the Python loop has T/4096 steps at the defaults, not T/64. Every exponential is split at a point between the key and the query, so
    both factors are <= 1: nothing overflows, and an early position cannot underflow because a later score is high.
Padded keys get a = −∞ (weight 0); a position with no real key so far has c = 0. Scores, weights, state and sums
are float32 (float64 for float64 x) with autocast off: the products are thin (L×L by L×D per chunk, 1×T by T×D),
and on a CPU without AMX a bf16 batched matmul of these shapes measured ~20x slower than float32 (AVX2 host,
torch 2.13, 1 thread: [64, 64, 64] @ [64, 64, 512] in 875 ms against 38 ms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from ..amp import no_autocast

CHUNK_SIZE = 64
#: chunks per group of the carry computation (``_carries``)
GROUP_SIZE = 64

ContextState = tuple[Tensor, Tensor, Tensor]  # m [B], l [B], u [B, D]


def stat_dtype(x: Tensor) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _finite_or_zero(m: Tensor) -> Tensor:
    """A stabiliser: −∞ (no real key yet) becomes 0, where every weight it divides is e^{−∞} = 0 anyway."""
    return torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))


def _safe(den: Tensor) -> Tensor:
    """The denominator with zeros (no real key so far; the numerator is 0 too) replaced by 1, so c = 0 and its
    gradient stays finite."""
    return torch.where(den > 0, den, torch.ones((), dtype=den.dtype, device=den.device))


def scores(x: Tensor, weight: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(x in the stat dtype ``[B, T, D]``, a = x·W_k ``[B, T]`` with −∞ at padded keys); call with autocast off."""
    sd = stat_dtype(x)
    xs = x.to(sd)
    a = xs @ weight.to(sd)
    if key_padding_mask is not None:
        a = a.masked_fill(~key_padding_mask, float("-inf"))
    return xs, a


def empty_state(batch: int, dim: int, device: torch.device, dtype: torch.dtype) -> ContextState:
    """(m, l, u) before any token: (−∞, 0, 0)."""
    return (torch.full((batch,), float("-inf"), device=device, dtype=dtype),
            torch.zeros(batch, device=device, dtype=dtype), torch.zeros(batch, dim, device=device, dtype=dtype))


def context_pool(x: Tensor, weight: Tensor, *, causal: bool, key_padding_mask: Tensor | None = None,
                 initial_state: ContextState | None = None, output_final_state: bool = False,
                 chunk_size: int = CHUNK_SIZE) -> tuple[Tensor, ContextState | None]:
    """Attention pooling, ``x [B, T, D]``, ``weight [D]`` -> (c, final state or None) in the stat dtype:
    c is ``[B, 1, D]`` (non-causal) or ``[B, T, D]`` (causal). See the module docstring and ``naive.context_pool``.
    ``chunk_size`` (causal only): tokens per chunk L.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    with no_autocast(x.device):
        return _context_pool(x, weight, causal, key_padding_mask, initial_state, output_final_state, chunk_size)


def _context_pool(x: Tensor, weight: Tensor, causal: bool, key_padding_mask: Tensor | None,
                  initial_state: ContextState | None, output_final_state: bool,
                  chunk_size: int) -> tuple[Tensor, ContextState | None]:
    xs, a = scores(x, weight, key_padding_mask)
    x = xs  # everything below runs in the stat dtype
    if not causal:
        ref = _finite_or_zero(a.amax(dim=1, keepdim=True))
        e = torch.exp(a - ref)  # [B, T]
        p = e / _safe(e.sum(dim=1, keepdim=True))  # the softmax over the real keys
        return p[:, None, :] @ x, None  # [B, 1, D]
    b, t, d = xs.shape
    n = -(-t // chunk_size)
    pad = n * chunk_size - t
    ac = F.pad(a, (0, pad), value=float("-inf")).view(b, n, chunk_size)
    xc = F.pad(x, (0, 0, 0, pad)).view(b, n, chunk_size, d)
    local_max = torch.cummax(ac, dim=-1).values  # [B, n, L]: running max inside each chunk
    chunk_max = local_max[..., -1]  # [B, n]
    e_chunk = torch.exp(ac - _finite_or_zero(chunk_max)[..., None])  # [B, n, L], <= 1
    u_chunk = (e_chunk[:, :, None, :] @ xc).squeeze(2)  # [B, n, D]
    l_chunk = e_chunk.sum(dim=-1)  # [B, n]
    init = initial_state if initial_state is not None else empty_state(b, d, x.device, xs.dtype)
    (m_prev, l_prev, u_prev), (m, l, u) = _carries(tuple(z.to(xs.dtype) for z in init), chunk_max, l_chunk, u_chunk)
    ref = _finite_or_zero(torch.maximum(m_prev[..., None], local_max))  # [B, n, L]: running max at each query
    causal_mask = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    logits = (ac[:, :, None, :] - ref[..., :, None]).masked_fill(~causal_mask, float("-inf"))
    p = torch.exp(logits)  # [B, n, L(query), L(key)], <= 1
    scale = torch.exp(m_prev[..., None] - ref)  # [B, n, L], <= 1
    num = scale[..., None] * u_prev[:, :, None, :] + p @ xc  # [B, n, L, D]
    den = scale * l_prev[..., None] + p.sum(dim=-1)
    c = (num / _safe(den)[..., None]).reshape(b, n * chunk_size, d)[:, :t]
    return c, ((m, l, u) if output_final_state else None)


def _carries(init: ContextState, m: Tensor, l: Tensor, u: Tensor) -> tuple[ContextState, ContextState]:
    """Exclusive prefix merge of n chunk summaries (max ``m [B, n]``, ``l [B, n]``, ``u [B, n, D]``) after ``init``:
    (the state before each chunk, as ``[B, n]``, ``[B, n]``, ``[B, n, D]``; the state after the last chunk).

    The same two levels as the tokens: inside a group of G chunks, one masked [G, G] matrix of weights
    e^{m_c' − R_c} <= 1 (c' < c, R_c the running max before chunk c) times the summaries; across groups, a loop over
    the n/G groups carrying (max, sum, weighted sum). O(n·G·D + (n/G)·D) work, n/G sequential steps.
    """
    b, n = m.shape
    d = u.shape[-1]
    group = GROUP_SIZE  # read at call time, so tests can make groups small
    ng = -(-n // group)
    pad = ng * group - n
    mg = F.pad(m, (0, pad), value=float("-inf")).view(b, ng, group)
    lg = F.pad(l, (0, pad)).view(b, ng, group)
    ug = F.pad(u, (0, 0, 0, pad)).view(b, ng, group, d)
    # each group's own summary, relative to its max
    g_max = mg.amax(dim=-1)  # [B, ng]
    w = torch.exp(mg - _finite_or_zero(g_max)[..., None])  # [B, ng, G], <= 1
    g_l = (w * lg).sum(dim=-1)
    g_u = (w[:, :, None, :] @ ug).squeeze(2)  # [B, ng, D]
    state, before = init, []
    for i in range(ng):  # the state before each group
        before.append(state)
        state = _merge(*state, g_max[:, i], g_l[:, i], g_u[:, i])
    top = torch.stack([z[0] for z in before], dim=1)  # [B, ng]
    top_l = torch.stack([z[1] for z in before], dim=1)
    top_u = torch.stack([z[2] for z in before], dim=1)  # [B, ng, D]
    # running max strictly before each chunk: the groups before, then the earlier chunks of its own group
    shifted = F.pad(mg, (1, 0), value=float("-inf"))[..., :group]
    run_max = torch.maximum(top[..., None], torch.cummax(shifted, dim=-1).values)  # [B, ng, G]
    ref = _finite_or_zero(run_max)
    earlier = torch.ones(group, group, dtype=torch.bool, device=m.device).tril(-1)
    weights = torch.exp((mg[:, :, None, :] - ref[..., :, None]).masked_fill(~earlier, float("-inf")))  # [B,ng,G,G]
    scale = torch.exp(top[..., None] - ref)  # [B, ng, G], <= 1
    m_prev = run_max.reshape(b, -1)[:, :n]
    l_prev = (scale * top_l[..., None] + (weights * lg[:, :, None, :]).sum(dim=-1)).reshape(b, -1)[:, :n]
    u_prev = (scale[..., None] * top_u[:, :, None, :] + weights @ ug).reshape(b, -1, d)[:, :n]
    return (m_prev, l_prev, u_prev), state


def _merge(m: Tensor, l: Tensor, u: Tensor, m2: Tensor, l2: Tensor, u2: Tensor) -> ContextState:
    """Two (max, sum, weighted sum) summaries -> one, each rescaled by e^{own max − joint max} <= 1."""
    top = torch.maximum(m, m2)
    ref = _finite_or_zero(top)
    s1, s2 = torch.exp(m - ref), torch.exp(m2 - ref)
    return top, s1 * l + s2 * l2, s1[:, None] * u + s2[:, None] * u2


def context_pool_step(x_t: Tensor, weight: Tensor, state: ContextState) -> tuple[Tensor, ContextState]:
    """One causal step: ``x_t [B, D]``, state (m [B], l [B], u [B, D]) -> (c_t [B, D], new state), in the state's
    dtype. The state is not modified."""
    m, l, u = state
    xs = x_t.to(u.dtype)
    with no_autocast(x_t.device):
        a = xs @ weight.to(u.dtype)  # [B]
    m, l, u = _merge(m, l, u, a, torch.ones_like(a), xs)
    return u / _safe(l)[:, None], (m, l, u)
