"""Sliding-window attention: the blocked fast path against the dense oracle (float64 reference)."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.ops.local import blocked, naive

FLOORS = {torch.float32: 1e-6, torch.bfloat16: 1e-3}  # tiny absolute floor of the 2x-oracle-error rule


def _inputs(b, h, t, d, dtype, seed, padding, alibi):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    kpm = None
    if padding:
        kpm = torch.rand(b, t, generator=g) > 0.3
        kpm[0] = True  # one fully real sequence, the other random
    slopes = torch.rand(h, generator=g, dtype=torch.float64) * 0.5 if alibi else None
    dout = torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    if kpm is not None:
        dout = dout * kpm[:, None, :, None]  # the loss only reads real query positions
    return q, k, v, kpm, slopes, dout


def _run(fn, q, k, v, dout, dtype, **kw):
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    return [out.detach().double()] + [gr.double() for gr in grads]


def _max_err(a, b, rows=None):
    diff = (a - b).abs()
    if rows is not None:
        diff = diff * rows[:, None, :, None]
    return diff.max().item()


def _check_against_oracle(t, window, block_size, causal, dtype, padding, alibi, seed=0, b=2, h=2, d=16):
    q, k, v, kpm, slopes, dout = _inputs(b, h, t, d, dtype, seed, padding, alibi)
    kw = dict(window=window, causal=causal, key_padding_mask=kpm)
    ref = _run(naive.sliding_window_attention, q, k, v, dout, torch.float64, alibi_slopes=slopes, **kw)
    low = _run(naive.sliding_window_attention, q, k, v, dout, dtype,
               alibi_slopes=None if slopes is None else slopes.to(dtype), **kw)
    fast = _run(blocked.sliding_window_attention, q, k, v, dout, dtype, alibi_slopes=slopes,
                block_size=block_size, **kw)
    rows = None if kpm is None else kpm.double()  # compare outputs at real query positions
    for name, r, lo, fa in zip(("out", "dq", "dk", "dv"), ref, low, fast):
        assert torch.isfinite(fa).all(), name
        sel = rows if name == "out" else None
        err_fast, err_oracle = _max_err(fa, r, sel), _max_err(lo, r, sel)
        assert err_fast <= 2 * err_oracle + FLOORS[dtype], (name, err_fast, err_oracle)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("window,block_size", [(16, 8), (16, 32), (5, None), (300, None)])
@pytest.mark.parametrize("t", [1, 7, 63, 257])
def test_matches_oracle(t, window, block_size, causal, dtype):
    _check_against_oracle(t, window, block_size, causal, dtype, padding=True, alibi=True, seed=t + window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("padding,alibi", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("t,window,block_size", [(63, 16, 8), (257, 64, None), (200, 33, 32)])
def test_matches_oracle_options(t, window, block_size, causal, dtype, padding, alibi):
    _check_against_oracle(t, window, block_size, causal, dtype, padding=padding, alibi=alibi, seed=1)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_many_groups_match_oracle(monkeypatch, causal):
    """Force several block groups per call (the group loop, edge masks and fold across group borders)."""
    monkeypatch.setattr(blocked, "_GROUP_SCORES", 3000)
    for dtype in (torch.float32, torch.bfloat16):
        _check_against_oracle(150, 20, 8, causal, dtype, padding=True, alibi=True, seed=5)


def test_float64_agrees_to_rounding():
    q, k, v, kpm, slopes, dout = _inputs(2, 3, 100, 8, torch.float64, 3, True, True)
    for causal in (True, False):
        kw = dict(window=24, causal=causal, key_padding_mask=kpm, alibi_slopes=slopes)
        ref = _run(naive.sliding_window_attention, q, k, v, dout, torch.float64, **kw)
        fast = _run(blocked.sliding_window_attention, q, k, v, dout, torch.float64, block_size=16, **kw)
        for r, fa in zip(ref, fast):
            assert torch.allclose(fa, r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_window_semantics(causal):
    """Causal: keys p-w+1..p; non-causal: keys p-w//2..p+w//2 — checked by an explicit per-query softmax."""
    t, w, d = 11, 4, 3
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, t, d, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.empty(1, 1, t, d, dtype=torch.float64)
    for p in range(t):
        lo, hi = (p - w + 1, p) if causal else (p - w // 2, p + w // 2)
        keys = list(range(max(lo, 0), min(hi, t - 1) + 1))
        weights = torch.softmax(k[0, 0, keys] @ q[0, 0, p] / math.sqrt(d), dim=0)
        expected[0, 0, p] = weights @ v[0, 0, keys]
    for fn in (naive.sliding_window_attention, blocked.sliding_window_attention):
        assert torch.allclose(fn(q, k, v, window=w, causal=causal), expected, atol=1e-12, rtol=0)


def test_query_without_keys_outputs_zeros_with_finite_gradients():
    q, k, v = (torch.randn(2, 2, 40, 8, requires_grad=True) for _ in range(3))
    kpm = torch.ones(2, 40, dtype=torch.bool)
    kpm[1] = False  # second sequence: no real key at all
    kpm[0, 10:30] = False  # first: a hole wider than the window
    out = blocked.sliding_window_attention(q, k, v, window=8, causal=True, key_padding_mask=kpm, block_size=8)
    ref = naive.sliding_window_attention(q, k, v, window=8, causal=True, key_padding_mask=kpm)
    assert (out[1] == 0).all()
    assert (out[0, :, 17:30] == 0).all()  # queries 17..29 only see the hole
    assert torch.allclose(out, ref, atol=1e-5)
    out.square().sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (k.grad[1] == 0).all() and (v.grad[1] == 0).all()


def test_saved_tensors_are_linear_in_t():
    """Structural memory check: nothing of T×T size is kept for backward, and what is kept grows linearly."""
    def saved_sizes(t):
        sizes = []

        def pack(x):
            sizes.append(x.numel())
            return x

        q, k, v = (torch.randn(1, 2, t, 16, requires_grad=True) for _ in range(3))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = blocked.sliding_window_attention(q, k, v, window=32, causal=True)
        out.sum().backward()
        assert sizes, "the autograd function saved nothing: the hook did not see it"
        return sizes

    small, large = saved_sizes(1024), saved_sizes(2048)
    assert max(small) < 1024 * 1024
    assert sum(large) <= 2.2 * sum(small)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_window_must_be_positive_int(bad):
    q = torch.randn(1, 1, 8, 4)
    for fn in (naive.sliding_window_attention, blocked.sliding_window_attention):
        with pytest.raises(ValueError, match="window"):
            fn(q, q, q, window=bad, causal=True)


def test_block_size_and_shapes_are_validated():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="block_size"):
        blocked.sliding_window_attention(q, q, q, window=4, causal=True, block_size=0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        blocked.sliding_window_attention(q, q, q, window=4, causal=True, key_padding_mask=torch.ones(1, 7).bool())
    with pytest.raises(ValueError, match="alibi_slopes"):
        blocked.sliding_window_attention(q, q, q, window=4, causal=True, alibi_slopes=torch.ones(2))


def _dense_lse(q, k, window, causal, key_padding_mask=None, scale=None):
    """float64 reference: log Σ exp(scores) over each query's window (−inf where it sees no key)."""
    t, d = q.shape[-2], q.shape[-1]
    left, right = naive.window_bounds(window, causal)
    rel = torch.arange(t)[None, :] - torch.arange(t)[:, None]  # key − query
    allowed = (rel >= -left) & (rel <= right)
    s = q @ k.transpose(-1, -2) * (scale or d ** -0.5)
    s = s.masked_fill(~allowed, -math.inf)
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask[:, None, None, :], -math.inf)
    return torch.logsumexp(s, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("t", [7, 257])
def test_log_sum_exp_and_its_gradient_match_the_dense_form(t, causal, dtype):
    q, k, v, _, _, dout = _inputs(2, 2, t, 16, torch.float64, 3, False, False)
    dl = torch.randn(2, 2, t, dtype=torch.float64)

    def both(fn_out, fn_lse, dt):
        qq, kk, vv = (x.detach().to(dt).requires_grad_() for x in (q, k, v))
        out, lse = fn_out(qq, kk, vv), fn_lse(qq, kk, vv)
        grads = torch.autograd.grad((out, lse), (qq, kk, vv), (dout.to(out.dtype), dl.to(lse.dtype)))
        return [out.double(), lse.double()] + [g.double() for g in grads]

    kw = dict(window=9, causal=causal)
    ref = both(lambda *a: naive.sliding_window_attention(*a, **kw), lambda qq, kk, vv: _dense_lse(qq, kk, **kw),
               torch.float64)
    low = both(lambda *a: naive.sliding_window_attention(*a, **kw), lambda qq, kk, vv: _dense_lse(qq, kk, **kw), dtype)
    calls = {}

    def fast_out(qq, kk, vv):
        calls["o"], calls["lse"] = blocked.sliding_window_attention(qq, kk, vv, block_size=8, return_lse=True, **kw)
        return calls["o"]

    fast = both(fast_out, lambda *a: calls["lse"], dtype)
    assert calls["lse"].dtype == torch.float32
    for name, r, lo, fa in zip(("out", "lse", "dq", "dk", "dv"), ref, low, fast):
        err_fast, err_oracle = (fa - r).abs().max().item(), (lo - r).abs().max().item()
        assert err_fast <= 2 * err_oracle + FLOORS[dtype], (name, err_fast, err_oracle)


def test_log_sum_exp_is_minus_inf_where_a_query_sees_no_key():
    q, k, v, _, _, _ = _inputs(1, 2, 12, 8, torch.float64, 4, False, False)
    kpm = torch.ones(1, 12, dtype=torch.bool)
    kpm[0, :6] = False  # causal window 3: queries 0..5 see only padded keys
    out, lse = blocked.sliding_window_attention(q, k, v, window=3, causal=True, key_padding_mask=kpm,
                                                return_lse=True, block_size=4)
    assert torch.isinf(lse[..., :6]).all() and (lse[..., :6] < 0).all() and (out[..., :6, :] == 0).all()
    torch.testing.assert_close(lse[..., 6:], _dense_lse(q, k, 3, True, kpm)[..., 6:])
