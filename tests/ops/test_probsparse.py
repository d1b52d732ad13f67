"""ProbSparse attention (Informer, Zhou et al. 2021): the fast path (``ops/probsparse/sparse.py``) against the oracle
(``ops/probsparse/naive.py``) for the same selection, outputs and gradients, float32/bf16, odd lengths, checkpointed
query chunks smaller than the active set, causal and padded; the selection rules; and the paper's premise (Sec. 3.1):
queries whose attention is uniform ("lazy") lose nothing by receiving mean(V), so on inputs where only a few queries
are peaked ProbSparse equals softmax attention."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.probsparse import naive, sparse
from lightformer.ops.softmax.naive import attention as softmax_attention

B, H, D = 2, 2, 8
LENGTHS = (1, 7, 63, 257)


def make(t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(B, t, dtype=torch.bool)
    mask[1, t // 2 + 1:] = False
    return q, k, v, mask


def selection(q, k, mask, causal, factor=3.0):
    counts = [q.shape[2]] * q.shape[0] if mask is None else mask.sum(-1).tolist()
    m = naive.sparsity_measure(q, k, key_padding_mask=mask, sample_factor=3.0, causal=causal, seed=11)
    return naive.select_queries(m, counts, factor=factor, causal=causal)


def run(fn, q, k, v, sel, grad_out, **kw):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    y = fn(*leaves, *sel, **kw)
    return [y] + list(torch.autograd.grad(y, leaves, grad_out.to(y.dtype)))


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_matches_oracle_float64(t, causal, padded):
    q, k, v, mask = make(t)
    mask = mask if padded else None
    sel = selection(q, k, mask, causal)
    g = torch.randn(B, H, t, D, dtype=torch.float64)
    for chunk in (None, 3):  # 3: checkpointed chunks smaller than the active set
        for a, b in zip(run(sparse.probsparse_attention, q, k, v, sel, g, causal=causal, key_padding_mask=mask,
                            query_chunk=chunk),
                        run(naive.probsparse_attention, q, k, v, sel, g, causal=causal, key_padding_mask=mask)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_error_within_twice_naive(dtype, causal):
    t = 257
    q, k, v, mask = make(t, seed=1)
    sel = selection(q, k, mask, causal)
    g = torch.randn(B, H, t, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = run(naive.probsparse_attention, q, k, v, sel, g, causal=causal, key_padding_mask=mask)
    low = [x.to(dtype) for x in (q, k, v)]
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    fast = run(sparse.probsparse_attention, *low, sel, g, causal=causal, key_padding_mask=mask, query_chunk=16)
    ref = run(naive.probsparse_attention, *low, sel, g, causal=causal, key_padding_mask=mask)
    for a, n, e in zip(fast, ref, exact):
        err_fast, err_naive = (a.double() - e).abs().max().item(), (n.double() - e).abs().max().item()
        assert err_fast <= 2 * err_naive + floor * e.abs().max().item(), (err_fast, err_naive)


def test_selection_counts():
    """u = ceil(c·ln n) active queries bidirectional; causal: at most u·(1 + ln(n/u)), never a padded query."""
    t = 257
    q, k, _, mask = make(t)
    idx, valid = selection(q, k, mask, causal=False, factor=3.0)
    assert valid.sum(-1).tolist() == [[naive.top_count(257, 3.0)] * H, [naive.top_count(129, 3.0)] * H]
    idx, valid = selection(q, k, mask, causal=True, factor=3.0)
    u = naive.top_count(257, 3.0)
    assert (valid.sum(-1)[0] <= naive.causal_budget(257, u)).all() and (valid.sum(-1) >= 1).all()
    active = naive.active_mask(idx, valid, t)
    assert not active[1, :, 129:].any()


def test_equals_softmax_when_all_queries_are_active():
    """factor large enough that u = T: ProbSparse is exact softmax attention (bidirectional)."""
    t = 63
    q, k, v, mask = make(t)
    sel = selection(q, k, None, causal=False, factor=100.0)
    torch.testing.assert_close(sparse.probsparse_attention(q, k, v, *sel, causal=False),
                               softmax_attention(q, k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_exact_when_lazy_queries_are_uniform(causal):
    """Zhou et al. 2021, Sec. 3.1: a query whose attention is uniform (q = 0: M̄ = 0) gets exactly mean(V) from
    softmax attention (the cumulative mean when causal), so with a few peaked queries (M̄ > 0) among them the
    measure selects the peaked ones and ProbSparse equals softmax attention to rounding."""
    t = 200
    q, k, v, _ = make(t, seed=5)
    peaked = torch.tensor([5, 37, 90, 150, 199])
    q_sparse = torch.zeros_like(q)
    q_sparse[:, :, peaked] = 4.0 * q[:, :, peaked]
    sel = selection(q_sparse, k, None, causal=causal, factor=1.0)  # u = ceil(ln 200) = 6 >= 5 peaked
    assert naive.active_mask(*sel, t)[:, :, peaked].all()
    out = sparse.probsparse_attention(q_sparse, k, v, *sel, causal=causal)
    torch.testing.assert_close(out, softmax_attention(q_sparse, k, v, causal=causal), rtol=1e-10, atol=1e-12)
