"""ops/ssd: the chunked SSD fast path against the recurrence in float64 (outputs, final state and every gradient:
q, k, v, log-decays, initial state) at odd lengths with chunk sizes that do not divide T, grouped heads, several
chunk groups; the parallel form and the one-token step against the recurrence; the masked segment sum; error
budgets at float32/bf16; and finite outputs at T = 65536 with decays at both extremes."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.ssd import chunked, naive, recurrent
from lightformer.ops.ssd.segsum import segsum

from oracle_check import assert_fast_matches_naive


def make(b=2, hk=2, h=4, t=7, dk=3, dv=5, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, hk, t, dk, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g, dtype=dtype)
    logd = -scale * torch.rand(b, h, t, generator=g, dtype=dtype)
    s0 = torch.randn(b, h, dk, dv, generator=g, dtype=dtype)
    return q, k, v, logd, s0


def value_and_grads(fn, tensors, seed=5):
    xs = [x.detach().clone().requires_grad_(True) for x in tensors]
    o, s = fn(*xs)
    gen = torch.Generator().manual_seed(seed)
    go, gs = torch.randn(o.shape, generator=gen, dtype=o.dtype), torch.randn(s.shape, generator=gen, dtype=s.dtype)
    grads = torch.autograd.grad((o * go).sum() + (s * gs).sum(), xs)
    return [o, s, *grads]


@pytest.mark.parametrize("t,c", [(1, 4), (7, 3), (63, 8), (257, 16)])
@pytest.mark.parametrize("hk", [1, 4], ids=["grouped", "per-head"])
def test_chunked_equals_recurrence_float64(t, c, hk, monkeypatch):
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", 4 * 4 * 3 * c * 8)  # several groups of chunks at larger T
    tensors = make(hk=hk, t=t, scale=2.0)
    ref = value_and_grads(lambda q, k, v, g, s0: naive.recurrent_ssd(q, k, v, g, initial_state=s0), tensors)
    fast = value_and_grads(lambda q, k, v, g, s0: chunked.chunked_ssd(
        q, k, v, g, chunk_size=c, initial_state=s0, output_final_state=True), tensors)
    names = ["o", "S_T", "dq", "dk", "dv", "dg", "dS_0"]
    for name, a, b in zip(names, fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_without_initial_state_and_only_the_final_state_used():
    q, k, v, g, _ = make(t=23)
    o, s = chunked.chunked_ssd(q, k, v, g, chunk_size=5, output_final_state=True)
    o_ref, s_ref = naive.recurrent_ssd(q, k, v, g)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    gr = g.clone().requires_grad_(True)
    d = torch.autograd.grad(chunked.chunked_ssd(q, k, v, gr, chunk_size=5, output_final_state=True)[1].sum(), gr)
    d_ref = torch.autograd.grad(naive.recurrent_ssd(q, k, v, gr)[1].sum(), gr)
    torch.testing.assert_close(d[0], d_ref[0], rtol=1e-10, atol=1e-10)


def test_constant_decay_broadcasts():
    """RetNet passes one log γ per head, ``[1, H, 1]``: same as the expanded ``[B, H, T]``."""
    q, k, v, _, s0 = make(t=19)
    g = torch.log1p(-torch.exp2(-5.0 - torch.arange(4.0, dtype=torch.float64)))[None, :, None]
    o, s = chunked.chunked_ssd(q, k, v, g, chunk_size=4, initial_state=s0, output_final_state=True)
    o_ref, s_ref = naive.recurrent_ssd(q, k, v, g.expand(2, 4, 19), initial_state=s0)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t", [1, 7, 63])
def test_parallel_equals_recurrence(t):
    q, k, v, g, s0 = make(hk=1, t=t, scale=3.0)
    torch.testing.assert_close(naive.parallel_ssd(q, k, v, g, initial_state=s0),
                               naive.recurrent_ssd(q, k, v, g, initial_state=s0)[0], rtol=1e-10, atol=1e-10)


def test_step_equals_recurrence():
    q, k, v, g, s0 = make(t=9)
    o_ref, s_ref = naive.recurrent_ssd(q, k, v, g, initial_state=s0)
    s, outs = s0, []
    for i in range(9):
        before = s.clone()
        o, s_new = recurrent.ssd_step(q[:, :, i], k[:, :, i], v[:, :, i], g[:, :, i], s)
        torch.testing.assert_close(s, before, rtol=0, atol=0)  # the given state is not modified
        s = s_new
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, dim=2), o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)


def test_segsum_is_a_masked_cumsum():
    g = torch.tensor([-1.0, -2.0, -30.0, -0.5], dtype=torch.float64)
    s = segsum(g)
    for i in range(4):
        for j in range(4):
            expected = g[j + 1:i + 1].sum() if j <= i else float("-inf")
            assert s[i, j].item() == expected
    # spans of very strong decay stay exact (no difference of large prefix sums)
    big = torch.full((64,), -30.0)
    torch.testing.assert_close(segsum(big)[63, 62], torch.tensor(-30.0), rtol=0, atol=0)
    assert torch.isfinite(segsum(big).exp()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_error_budget_at_low_precision(dtype):
    """error(chunked at dtype) <= 2 x error(recurrence at dtype) + floor, against the float64 recurrence."""
    q, k, v, g, _ = make(b=1, hk=2, h=2, t=63, dk=8, dv=8)
    g = g.float()  # log-decays stay float32 in both paths

    def fast(q, k, v):
        return chunked.chunked_ssd(q, k, v, g.to(torch.float64 if q.dtype == torch.float64 else torch.float32),
                                   chunk_size=16)[0]

    def slow(q, k, v):
        return naive.recurrent_ssd(q, k, v, g.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
                                   .to(q.dtype))[0]

    assert_fast_matches_naive(fast, slow, [q, k, v], dtype)


@pytest.mark.slow
@pytest.mark.parametrize("log_decay", [-30.0, -1e-6], ids=["strong", "weak"])
def test_long_sequence_stays_finite(log_decay):
    """T = 65536 in float32 and under bf16 autocast, decays at both extremes: finite outputs and state."""
    t = 65536
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, t, 4, generator=gen) for _ in range(2))
    v = torch.randn(1, 1, t, 4, generator=gen)
    g = torch.full((1, 1, t), log_decay) * (1 + 0.1 * torch.rand(1, 1, t, generator=gen))
    o, s = chunked.chunked_ssd(q, k, v, g, chunk_size=64, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o16, s16 = chunked.chunked_ssd(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, chunk_size=64,
                                       output_final_state=True)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert torch.isfinite(o16).all() and torch.isfinite(s16).all()
    rel = (o16.float() - o).norm() / o.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3g}"


def test_long_sequence_gradients_finite_bf16():
    t = 2048
    q, k, v, g, s0 = make(b=1, hk=1, h=2, t=t, dk=8, dv=8, dtype=torch.float32, scale=30.0)
    xs = [x.bfloat16().requires_grad_(True) for x in (q, k, v)]
    gg, s0 = g.requires_grad_(True), s0.requires_grad_(True)
    o, s = chunked.chunked_ssd(*xs, gg, chunk_size=64, initial_state=s0, output_final_state=True)
    (o.float().square().sum() + s.sum()).backward()
    for x in (*xs, gg, s0):
        assert torch.isfinite(x.grad).all()
    assert s0.grad.dtype == torch.float32 and gg.grad.dtype == torch.float32


def test_bad_arguments():
    q, k, v, g, s0 = make()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.chunked_ssd(q, k, v, g, chunk_size=0)
    with pytest.raises(ValueError, match="q, k"):
        chunked.chunked_ssd(q[:, :, :3], k, v, g)
    with pytest.raises(ValueError, match="q, k"):
        chunked.chunked_ssd(q[:, :1].repeat(1, 3, 1, 1), k[:, :1].repeat(1, 3, 1, 1), v, g)  # 3 ∤ 4 heads
    with pytest.raises(ValueError, match="initial_state"):
        chunked.chunked_ssd(q, k, v, g, initial_state=s0[:, :1])
