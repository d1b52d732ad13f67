"""MetaFormer-family ops (``ops/metaformer``): every fast path against its naive oracle in float64 (outputs, final
states and the gradients of inputs, parameters and initial states) at T in {1, 7, 63, 257}, with chunk sizes that do
not divide T; padding exactness; float32 error within twice the naive oracle's; finite outputs at T = 65536 in fp32
and bf16 with scores pushed to both extremes; errors that name the argument. Independent references too: torch's
fft2 (FNet), rfft/irfft (GFNet) and AvgPool1d (PoolFormer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightformer.ops.metaformer import context, fft, naive, pool

from oracle_check import assert_fast_matches_naive

B = 2
LENGTHS = (1, 7, 63, 257)


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def grads(y, leaves, g):
    return torch.autograd.grad(y, leaves, g, allow_unused=False)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def padded_masks(t: int) -> list[torch.Tensor]:
    """Right-padded and left-padded rows (the second row of each loses a third of its tokens, at least one kept)."""
    cut = max(1, t - t // 3)
    right = torch.ones(B, t, dtype=torch.bool)
    right[1, cut:] = False
    left = torch.ones(B, t, dtype=torch.bool)
    left[1, :t - cut] = False
    return [right, left]


# -- FNet ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("d", [8, 9])
@pytest.mark.parametrize("norm", ["ortho", "backward"])
def test_fourier_mix_matches_oracle(t, d, norm):
    x = rand(B, t, d).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y, y_ref = fft.fourier_mix(x, norm=norm), naive.fourier_mix(xr, norm=norm)
    scale = 1.0 if norm == "ortho" else (t * d) ** 0.5
    torch.testing.assert_close(y / scale, y_ref / scale, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y, torch.fft.fft2(x.detach(), dim=(1, 2), norm=norm).real, rtol=1e-9, atol=1e-9)
    g = rand(B, t, d, seed=1)
    close(grads(y, [x], g)[0], grads(y_ref, [xr], g)[0])


def test_fourier_mix_ortho_is_a_contraction_and_keeps_dtype():
    x = rand(B, 63, 16)
    assert fft.fourier_mix(x).norm() <= x.norm() * (1 + 1e-12)
    xb = x.to(torch.bfloat16)
    yb = fft.fourier_mix(xb)
    assert yb.dtype == torch.bfloat16
    assert (yb.double() - fft.fourier_mix(xb.double())).abs().max() < 0.02


# -- GFNet ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("extra", [0, 1, 6])
def test_global_filter_matches_oracle(t, extra):
    """n = max_len = T (the full-length filter) and n > T (x zero-padded to n), n odd and even."""
    n, d = t + extra, 5
    x = rand(B, t, d).requires_grad_(True)
    w = rand(n // 2 + 1, d, 2, seed=2).requires_grad_(True)
    xr, wr = (z.detach().clone().requires_grad_(True) for z in (x, w))
    y, y_ref = fft.global_filter(x, w, n=n), naive.global_filter(xr, wr, n=n)
    close(y, y_ref)
    g = rand(B, t, d, seed=3)
    for a, b in zip(grads(y, [x, w], g), grads(y_ref, [xr, wr], g)):
        close(a, b)


def test_global_filter_short_sequence_is_the_zero_padded_run():
    """T < n: exactly the first T rows of the length-n output for x followed by n − T zero tokens."""
    n, t, d = 40, 23, 6
    x, w = rand(B, t, d), rand(n // 2 + 1, d, 2, seed=1)
    padded = torch.cat([x, torch.zeros(B, n - t, d, dtype=x.dtype)], dim=1)
    reference = torch.fft.irfft(torch.fft.rfft(padded, dim=1, norm="ortho") * torch.view_as_complex(w), n=n, dim=1,
                                norm="ortho")
    close(fft.global_filter(x, w, n=n), reference[:, :t])


def test_global_filter_errors_name_the_argument():
    w = rand(5, 4, 2)
    with pytest.raises(ValueError, match="max_len=8"):
        fft.global_filter(rand(1, 9, 4), w, n=8)
    with pytest.raises(ValueError, match="weight"):
        fft.global_filter(rand(1, 8, 4), rand(4, 4, 2), n=8)


# -- PoolFormer ----------------------------------------------------------------------------------------------------
POOLS = [(False, 3), (False, 5), (True, 3), (True, 4), (True, 1)]


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("causal,k", POOLS)
def test_avg_pool_matches_oracle(t, causal, k):
    x = rand(B, t, 6)
    for mask in [None, *padded_masks(t)]:
        leaf, leaf_r = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y, _ = pool.avg_pool(leaf, k, causal=causal, key_padding_mask=mask)
        y_ref, _ = naive.avg_pool(leaf_r, k, causal=causal, key_padding_mask=mask)
        close(y, y_ref)
        g = rand(B, t, 6, seed=1)
        close(grads(y, [leaf], g)[0], grads(y_ref, [leaf_r], g)[0])


@pytest.mark.parametrize("k", [3, 5])
def test_avg_pool_is_torch_avg_pool_minus_x(k):
    x = rand(B, 63, 6)
    ref = F.avg_pool1d(x.transpose(1, 2), k, stride=1, padding=k // 2, count_include_pad=False).transpose(1, 2) - x
    close(pool.avg_pool(x, k, causal=False)[0], ref)


@pytest.mark.parametrize("causal,k", POOLS)
def test_avg_pool_padding_equals_unpadded_run(causal, k):
    """Garbage at padded positions; real positions equal the run on the real tokens alone (left and right pad)."""
    t = 63
    x = rand(B, t, 6)
    for mask in padded_masks(t):
        garbage = torch.where(mask[..., None], x, 1e3 * rand(B, t, 6, seed=9))
        y, _ = pool.avg_pool(garbage, k, causal=causal, key_padding_mask=mask)
        assert torch.isfinite(y).all()
        real = mask[1]
        alone, _ = pool.avg_pool(x[1:2, real], k, causal=causal)
        close(y[1:2, real], alone)


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("k", [1, 3, 4])
def test_avg_pool_state_matches_oracle(t, k):
    """A causal run split in two: the second part continues from the first's window; equal to the oracle and to
    the unsplit run, with gradients into the window."""
    x = rand(B, t + 5, 6)
    whole, _ = pool.avg_pool(x, k, causal=True)
    for cut in sorted({0, 1, min(2, t), t // 2}):
        head, window = pool.avg_pool(x[:, :cut], k, causal=True, output_final_state=True) if cut else (None, None)
        win = (window if window is not None else torch.zeros(B, k - 1, 6, dtype=x.dtype)).requires_grad_(True)
        win_r = win.detach().clone().requires_grad_(True)
        tail = x[:, cut:cut + t]
        y, w_end = pool.avg_pool(tail, k, causal=True, initial_state=win, start=cut, output_final_state=True)
        y_ref, w_end_ref = naive.avg_pool(tail, k, causal=True, initial_state=win_r, start=cut,
                                          output_final_state=True)
        close(y, y_ref)
        close(w_end, w_end_ref)
        close(y, whole[:, cut:cut + t])
        g = rand(*y.shape, seed=4)
        if k > 1:
            close(grads(y, [win], g)[0], grads(y_ref, [win_r], g)[0])


def test_avg_pool_even_size_needs_causal():
    with pytest.raises(ValueError, match="pool_size"):
        pool.avg_pool(rand(1, 5, 2), 4, causal=False)


# -- GCNet context pooling -----------------------------------------------------------------------------------------
def state_leaves(d: int, seed: int = 5):
    m = rand(B, seed=seed, scale=2.0)
    m[0] = float("-inf")  # row 0 starts empty (no token yet), row 1 from a real prefix
    l = rand(B, seed=seed + 1).abs() + 0.5
    l[0] = 0.0
    u = rand(B, d, seed=seed + 2)
    u[0] = 0.0
    return m, l, u


@pytest.fixture(params=[64, 3], ids=["groups64", "groups3"])
def group_size(request, monkeypatch):
    """Chunk summaries are combined in groups (``context.GROUP_SIZE``); 3 makes T = 257 cross several groups."""
    monkeypatch.setattr(context, "GROUP_SIZE", request.param)
    return request.param


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("causal,chunk", [(False, 64), (True, 5), (True, 16), (True, 64)])
def test_context_pool_matches_oracle(t, causal, chunk, group_size):
    d = 6
    x, w = rand(B, t, d), rand(d, seed=1, scale=1.5)  # peaky scores
    for mask in [None, *padded_masks(t)]:
        leaves = [x.clone().requires_grad_(True), w.clone().requires_grad_(True)]
        leaves_r = [z.detach().clone().requires_grad_(True) for z in leaves]
        c, _ = context.context_pool(*leaves, causal=causal, key_padding_mask=mask, chunk_size=chunk)
        c_ref, _ = naive.context_pool(*leaves_r, causal=causal, key_padding_mask=mask)
        close(c, c_ref)
        g = rand(*c.shape, seed=2)
        for a, b in zip(grads(c, leaves, g), grads(c_ref, leaves_r, g)):
            close(a, b)


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("chunk", [5, 64])
def test_context_pool_state_matches_oracle(t, chunk, group_size):
    """Causal from an initial state (one row empty, one after a prefix), with the final state: outputs, state and
    the gradients of x, W_k and the initial (l, u) against the oracle."""
    d = 6
    x, w = rand(B, t, d), rand(d, seed=1, scale=1.5)
    m0, l0, u0 = state_leaves(d)
    leaves = [x.clone().requires_grad_(True), w.clone().requires_grad_(True), l0.clone().requires_grad_(True),
              u0.clone().requires_grad_(True)]
    leaves_r = [z.detach().clone().requires_grad_(True) for z in leaves]
    out = context.context_pool(leaves[0], leaves[1], causal=True, initial_state=(m0, leaves[2], leaves[3]),
                               output_final_state=True, chunk_size=chunk)
    ref = naive.context_pool(leaves_r[0], leaves_r[1], causal=True, initial_state=(m0, leaves_r[2], leaves_r[3]),
                             output_final_state=True)
    (c, (m, l, u)), (c_ref, (m_r, l_r, u_r)) = out, ref
    for a, b in zip((c, m, l, u), (c_ref, m_r, l_r, u_r)):
        close(a, b)
    gs = [rand(*z.shape, seed=10 + i) for i, z in enumerate((c, l, u))]
    fast = torch.autograd.grad((c, l, u), leaves, gs)
    slow = torch.autograd.grad((c_ref, l_r, u_r), leaves_r, gs)
    for a, b in zip(fast, slow):
        close(a, b)


def test_context_pool_split_run_and_steps_equal_the_whole(group_size):
    d, t = 6, 41
    x, w = rand(B, t, d), rand(d, seed=1, scale=1.5)
    whole, end = context.context_pool(x, w, causal=True, output_final_state=True, chunk_size=8)
    head, state = context.context_pool(x[:, :13], w, causal=True, output_final_state=True, chunk_size=8)
    tail, end2 = context.context_pool(x[:, 13:], w, causal=True, initial_state=state, output_final_state=True,
                                      chunk_size=8)
    close(torch.cat([head, tail], dim=1), whole)
    steps, s = [], context.empty_state(B, d, x.device, x.dtype)
    for i in range(t):
        c_t, s = context.context_pool_step(x[:, i], w, s)
        steps.append(c_t)
    close(torch.stack(steps, dim=1), whole)
    for a, b, e in zip(end, end2, s):
        close(a, b)
        close(a, e)


def test_context_pool_padding_equals_unpadded_run():
    t, d = 63, 6
    x, w = rand(B, t, d), rand(d, seed=1, scale=1.5)
    for causal in (False, True):
        for mask in padded_masks(t):
            garbage = torch.where(mask[..., None], x, 1e3 * rand(B, t, d, seed=9))
            c, _ = context.context_pool(garbage, w, causal=causal, key_padding_mask=mask, chunk_size=16)
            assert torch.isfinite(c).all()
            real = mask[1]
            alone, _ = context.context_pool(x[1:2, real], w, causal=causal, chunk_size=16)
            close(c[1:2, real] if causal else c[1:2], alone)


@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_context_pool_float32_within_twice_naive(dtype, causal):
    x, w = rand(B, 257, 8), rand(8, seed=1, scale=1.5)
    assert_fast_matches_naive(lambda a, b: context.context_pool(a, b, causal=causal, chunk_size=16)[0],
                              lambda a, b: naive.context_pool(a, b, causal=causal)[0], [x, w], dtype)


@pytest.mark.parametrize("dtype", [torch.float32])
def test_fft_and_pool_float32_within_twice_naive(dtype):
    x, w = rand(B, 257, 8), rand(257 // 2 + 1, 8, 2, seed=1)
    assert_fast_matches_naive(lambda a: fft.fourier_mix(a), lambda a: naive.fourier_mix(a), [x], dtype)
    assert_fast_matches_naive(lambda a, b: fft.global_filter(a, b, n=257),
                              lambda a, b: naive.global_filter(a, b, n=257), [x, w], dtype)
    for causal in (False, True):
        assert_fast_matches_naive(lambda a: pool.avg_pool(a, 3, causal=causal)[0],
                                  lambda a: naive.avg_pool(a, 3, causal=causal)[0], [x], dtype)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1e-6, 30.0, 1e4])
def test_context_pool_long_sequence_finite(scale):
    """T = 65536, fp32 and bf16 autocast: scores near 0 (uniform weights) and huge (|a| up to ~1e5: one token takes
    all the weight, every other e^{a − m} underflows to 0 without a NaN), causal and not."""
    t, d = 65536, 8
    x = torch.randn(1, t, d, generator=torch.Generator().manual_seed(0))
    w = torch.randn(d, generator=torch.Generator().manual_seed(1)) * scale
    for causal in (False, True):
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                c, _ = context.context_pool(x, w, causal=causal)
            assert c.dtype == torch.float32 and torch.isfinite(c).all(), (causal, autocast)
            assert c.abs().max() <= x.abs().max() * (1 + 1e-2)  # a convex combination of the inputs


def test_context_pool_errors_name_the_argument():
    with pytest.raises(ValueError, match="chunk_size"):
        context.context_pool(rand(1, 4, 2), rand(2), causal=True, chunk_size=0)


def test_spectral_and_pool_long_sequence_finite():
    """T = 65536 in fp32 and bf16 (half precision is transformed in float32): finite, and bf16 close to fp32."""
    t, d = 65536, 4
    x = torch.randn(1, t, d, generator=torch.Generator().manual_seed(0))
    w = 0.02 * torch.randn(t // 2 + 1, d, 2, generator=torch.Generator().manual_seed(1))
    for fn in (lambda z: fft.fourier_mix(z), lambda z: fft.global_filter(z, w, n=t),
               lambda z: pool.avg_pool(z, 3, causal=True)[0]):
        y, y16 = fn(x), fn(x.to(torch.bfloat16))
        assert torch.isfinite(y).all() and torch.isfinite(y16).all() and y16.dtype == torch.bfloat16
        assert (y16.float() - y).norm() / y.norm() < 0.02
