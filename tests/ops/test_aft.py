"""AFT fast paths (``ops/aft/{simple,local,full}.py``) against the oracle ``ops/aft/naive.py``: outputs and gradients,
float32 and bf16, odd lengths, blocks/chunks shorter than T, causal and padded; plus the exact reductions that tie
the three variants together (Zhai et al. 2021: AFT-local with window >= T is AFT-full, AFT-full with w = 0 is
AFT-simple, Eq. 2 / Sec. 3.2 / Eq. 5)."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.aft import full, local, naive, simple

B, C, WINDOW, MAX_LEN = 2, 8, 5, 300
LENGTHS = (1, 7, 63, 257)


def make(t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, t, C, generator=g, dtype=torch.float64) for _ in range(3))
    k = 2.0 * k  # peaky weights
    w = torch.randn(MAX_LEN, MAX_LEN, generator=g, dtype=torch.float64)
    wb = torch.randn(MAX_LEN, 2 * WINDOW - 1, generator=g, dtype=torch.float64)
    mask = torch.ones(B, t, dtype=torch.bool)
    mask[1, t // 2 + 1:] = False
    return q, k, v, w, wb, mask


VARIANTS = {
    "simple": (lambda q, k, v, w, wb, **kw: simple.aft_simple(q, k, v, chunk=32, **kw),
               lambda q, k, v, w, wb, **kw: naive.aft_simple(q, k, v, **kw), ()),
    "local": (lambda q, k, v, w, wb, **kw: local.aft_local(q, k, v, wb, WINDOW, block_size=8, **kw),
              lambda q, k, v, w, wb, **kw: naive.aft_local(q, k, v, wb, WINDOW, **kw), ("wb",)),
    "full": (lambda q, k, v, w, wb, **kw: full.aft_full(q, k, v, w, block_size=32, **kw),
             lambda q, k, v, w, wb, **kw: naive.aft_full(q, k, v, w, **kw), ("w",)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t", LENGTHS)
def test_fast_matches_oracle_float64(variant, causal, t):
    fast, ref, params = VARIANTS[variant]
    q, k, v, w, wb, mask = make(t)
    for km in (None, mask):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, w, wb)]
        leaves_r = [x.clone().requires_grad_(True) for x in (q, k, v, w, wb)]
        y = fast(*leaves, causal=causal, key_padding_mask=km)
        y_r = ref(*leaves_r, causal=causal, key_padding_mask=km)
        torch.testing.assert_close(y, y_r, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(y)
        idx = [0, 1, 2] + [{"w": 3, "wb": 4}[p] for p in params]
        ga = torch.autograd.grad(y, [leaves[i] for i in idx], g)
        gb = torch.autograd.grad(y_r, [leaves_r[i] for i in idx], g)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_error_within_twice_naive(variant, dtype, causal):
    """Error vs the float64 oracle <= 2x the error of the naive oracle run at the same dtype (+ a tiny floor)."""
    fast, ref, params = VARIANTS[variant]
    t = 257
    q, k, v, w, wb, mask = make(t, seed=1)
    idx = [0, 1, 2] + [{"w": 3, "wb": 4}[p] for p in params]
    g = torch.randn(B, t, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run(fn, dt):
        leaves = [x.detach().to(dt).requires_grad_(True) for x in (q, k, v, w, wb)]
        y = fn(*leaves, causal=causal, key_padding_mask=mask)
        grads = torch.autograd.grad(y, [leaves[i] for i in idx], g.to(dt))
        return [y.double()] + [x.double() for x in grads]

    exact = run(ref, torch.float64)
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    for a, n, e in zip(run(fast, dtype), run(ref, dtype), exact):
        err_fast = (a - e).abs().max().item()
        err_naive = (n - e).abs().max().item()
        assert err_fast <= 2 * err_naive + floor * e.abs().max().item(), (err_fast, err_naive)


def test_variants_reduce_to_each_other():
    """AFT-local with window >= T equals AFT-full on the dense band; AFT-full with w = 0 equals AFT-simple."""
    t = 40
    q, k, v, w, wb, mask = make(t)
    wide = torch.randn(t, 2 * t - 1, dtype=torch.float64)
    dense = naive.band_to_dense(wide, t, t)
    for causal in (False, True):
        torch.testing.assert_close(local.aft_local(q, k, v, wide, t, causal=causal, block_size=64),
                                   full.aft_full(q, k, v, dense, causal=causal), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(full.aft_full(q, k, v, torch.zeros(t, t, dtype=torch.float64), causal=causal),
                                   simple.aft_simple(q, k, v, causal=causal), rtol=1e-10, atol=1e-12)


def test_causal_scan_is_stable_with_growing_keys():
    """Keys growing by 400 over the sequence (e^400 overflows float64): the running-max scan stays finite and equals
    the float64 recurrence, and its float32 result is close to it."""
    t = 300
    q, _, v, *_ = make(t)
    k = torch.linspace(0, 400, t, dtype=torch.float64)[None, :, None].expand(B, t, C).contiguous()
    ref = naive.aft_simple_recurrent(q, k, v)
    out = simple.aft_simple(q, k, v, causal=True, chunk=32)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    out32 = simple.aft_simple(q.float(), k.float(), v.float(), causal=True, chunk=32)
    # reference on the float32-rounded inputs (rounding K ~ 400 alone moves e^K by ~3e-5 relative)
    ref32 = naive.aft_simple_recurrent(*(x.float().double() for x in (q, k, v)))
    assert (out32.double() - ref32).abs().max() < 1e-5


def test_decode_step_matches_recurrence():
    t = 20
    q, k, v, *_ = make(t)
    state = (torch.full((B, C), float("-inf"), dtype=torch.float64), torch.zeros(B, C, dtype=torch.float64),
             torch.zeros(B, C, dtype=torch.float64))
    steps = []
    for i in range(t):
        y, state = simple.aft_simple_step(q[:, i], k[:, i], v[:, i], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), simple.aft_simple(q, k, v, causal=True), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("use_next", [True, False], ids=["tridiagonal", "lower"])
@pytest.mark.parametrize("nb", [1, 2, 5])
def test_block_tridiagonal_matmul_equals_the_dense_block_matrix(use_next, nb):
    """``local.block_tridiagonal_matmul`` against the explicit ``[nb·L, nb·L]`` block matrix applied to x (and to
    x_prev for the previous-block products): outputs and the gradients of a, x and x_prev, in float64."""
    g = torch.Generator().manual_seed(nb)
    lb, n, b = 3, 4, 2
    a = torch.randn(nb, lb, 3 * lb, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(b, nb, lb, n, generator=g, dtype=torch.float64, requires_grad=True)
    x_prev = torch.randn(b, nb, lb, n, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(b, nb, lb, n, generator=g, dtype=torch.float64)

    def dense(a, x, x_prev):
        same = torch.zeros(nb * lb, nb * lb, dtype=a.dtype)
        prev = torch.zeros_like(same)
        for j in range(nb):
            rows = slice(j * lb, (j + 1) * lb)
            same = same.index_put((torch.arange(rows.start, rows.stop)[:, None],
                                   torch.arange(rows.start, rows.stop)[None, :]), a[j, :, lb:2 * lb])
            if j > 0:
                prev = prev.index_put((torch.arange(rows.start, rows.stop)[:, None],
                                       torch.arange(rows.start - lb, rows.start)[None, :]), a[j, :, :lb])
            if use_next and j < nb - 1:
                same = same.index_put((torch.arange(rows.start, rows.stop)[:, None],
                                       torch.arange(rows.stop, rows.stop + lb)[None, :]), a[j, :, 2 * lb:])
        y = same @ x.flatten(1, 2) + prev @ x_prev.flatten(1, 2)
        return y.view(b, nb, lb, n)

    got = local.block_tridiagonal_matmul(a, x, x_prev, use_next=use_next)
    ref = dense(a, x, x_prev)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    for g1, g2 in zip(torch.autograd.grad(got, (a, x, x_prev), dy), torch.autograd.grad(ref, (a, x, x_prev), dy)):
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)
    # x_prev defaults to x (one gradient, both uses summed)
    got = local.block_tridiagonal_matmul(a, x, use_next=use_next)
    ref = dense(a, x, x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x, dy)[0], torch.autograd.grad(ref, x, dy)[0],
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="x_prev"):
        local.block_tridiagonal_matmul(a, x, x_prev[:1])
    with pytest.raises(ValueError, match=r"a must be \[nb, L, 3L\]"):
        local.block_tridiagonal_matmul(a[..., :lb], x)
