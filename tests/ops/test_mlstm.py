"""ops/mlstm: the chunkwise fast path against the stabilised recurrence (outputs, final state and every gradient,
initial state included, in float64 at odd lengths and chunk sizes that do not divide T, across several groups),
the recurrence against the unstabilised equations, the stabiliser's invariance, masked (skipped) tokens, the
low-precision error budget, and finite outputs at T = 65536 with extreme decays."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightformer.ops.mlstm import chunked, naive, recurrent

NAMES = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")


def make(t: int, b: int = 2, h: int = 2, d: int = 8, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=dtype) for _ in range(3))
    i_pre = 3 * torch.randn(b, h, t, generator=g, dtype=dtype)
    f_pre = 3 * torch.randn(b, h, t, generator=g, dtype=dtype) + 2
    state = (torch.randn(b, h, d, d, generator=g, dtype=dtype), torch.randn(b, h, d, generator=g, dtype=dtype),
             torch.randn(b, h, generator=g, dtype=dtype))
    return [q, k, v, i_pre, f_pre], list(state)


def run(fn, xs, state, with_state: bool, **kw):
    """Outputs, final state and the gradients of a loss that reads both (inputs, then the initial state)."""
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    st = [s.detach().clone().requires_grad_(True) for s in state]
    h, (c, n, m) = fn(*xs, initial_state=st if with_state else None, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(5)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)).sum() for x in (h, c, n, m))
    grads = torch.autograd.grad(loss, xs + (st if with_state else []))
    return [x.detach().double() for x in (h, c, n, m, *grads)]


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("t,cs", [(1, 4), (7, 3), (63, 16), (257, 32)])
def test_chunked_equals_recurrence(t, cs, with_state):
    """float64: outputs, the final (C, n, m) and the gradients of q, k, v, both gates and (C0, n0, m0)."""
    xs, st = make(t)
    ref = run(naive.mlstm_recurrent, xs, st, with_state)
    got = run(chunked.mlstm_chunked, xs, st, with_state, chunk_size=cs)
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-11, f"{name}: {rel_err(a, b):.2e}"


def test_several_groups(monkeypatch):
    """Shrink GROUP_ELEMENTS so that T = 131 in chunks of 8 spans many groups of 2 chunks (states and duals
    carried across groups, a short last group, a padded last chunk); keys scaled inside (``scale``)."""
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", 1 * 2 * 8 * 8 * 2)
    assert chunked.group_chunks(1, 2, 8, 17) == 2
    xs, st = make(131, b=1, seed=3)
    ref = run(naive.mlstm_recurrent, xs, st, True, scale=0.3)
    got = run(chunked.mlstm_chunked, xs, st, True, chunk_size=8, scale=0.3)
    for name, a, b in zip(NAMES, got, ref):
        assert rel_err(a, b) < 1e-11, f"{name}: {rel_err(a, b):.2e}"


def test_recurrence_equals_unstabilised_equations():
    """With moderate gates exp(ĩ) does not overflow: the stabilised recurrence equals Eq. 19-27 as written,
    h_t = C_tᵀq_t / max(|n_t·q_t|, 1) with i = exp(ĩ), f = σ(f̃) (no eps anywhere)."""
    (q, k, v, i_pre, f_pre), _ = make(40)
    c = torch.zeros(2, 2, 8, 8, dtype=torch.float64)
    n = torch.zeros(2, 2, 8, dtype=torch.float64)
    outs = []
    for t in range(40):
        i, f = torch.exp(i_pre[..., t]), torch.sigmoid(f_pre[..., t])
        c = f[..., None, None] * c + i[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = f[..., None] * n + i[..., None] * k[:, :, t]
        den = (n * q[:, :, t]).sum(-1, keepdim=True).abs().clamp_min(1.0)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], c) / den)
    h, (c_s, n_s, m_s) = naive.mlstm_recurrent(q, k, v, i_pre, f_pre, output_final_state=True)
    torch.testing.assert_close(h, torch.stack(outs, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_s * m_s.exp()[..., None, None], c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(n_s * m_s.exp()[..., None], n, rtol=1e-12, atol=1e-12)


def test_stabiliser_shift_leaves_outputs_unchanged():
    """(C', n', m) and (C' e^{−s}, n' e^{−s}, m + s) are the same state: same outputs, same unstabilised end."""
    xs, (c0, n0, m0) = make(50, seed=1)
    h1, (c1, n1, m1) = chunked.mlstm_chunked(*xs, chunk_size=16, initial_state=(c0, n0, m0),
                                             output_final_state=True)
    s = 7.5
    h2, (c2, n2, m2) = chunked.mlstm_chunked(*xs, chunk_size=16, output_final_state=True,
                                             initial_state=(c0 * math.exp(-s), n0 * math.exp(-s), m0 + s))
    torch.testing.assert_close(h2, h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c2 * (m2 - m1).exp()[..., None, None], c1, rtol=1e-12, atol=1e-12)


def test_step_equals_recurrence():
    xs, st = make(9)
    ref, _ = naive.mlstm_recurrent(*xs, initial_state=st)
    c, n, m = st
    for t in range(9):
        o, (c, n, m) = recurrent.mlstm_step(*(x[:, :, t] for x in xs), c, n, m)
        torch.testing.assert_close(o, ref[:, :, t], rtol=1e-12, atol=1e-12)


def test_masked_tokens_are_skipped():
    """ĩ = −inf, f̃ = +inf (i = 0, f = 1) leaves the state unchanged: the real tokens' outputs equal the run
    without the masked ones, even when a whole chunk is masked; gradients stay finite."""
    (q, k, v, i_pre, f_pre), _ = make(40, seed=2)
    masked = torch.zeros(40, dtype=torch.bool)
    masked[8:16] = True  # exactly chunk 1 of 8
    masked[21] = masked[33] = True
    i_m = i_pre.masked_fill(masked, float("-inf"))
    f_m = f_pre.masked_fill(masked, float("inf"))
    xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
    h, _ = chunked.mlstm_chunked(*xs, i_m, f_m, chunk_size=8)
    keep = ~masked
    ref, _ = naive.mlstm_recurrent(q[:, :, keep], k[:, :, keep], v[:, :, keep], i_pre[..., keep], f_pre[..., keep])
    torch.testing.assert_close(h[:, :, keep], ref, rtol=1e-11, atol=1e-11)
    grads = torch.autograd.grad(h[:, :, keep].sum(), xs)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype,floor", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_low_precision_error_budget(dtype, floor):
    """error(chunked at dtype vs float64) <= 2 x error(recurrence at dtype vs float64) + floor, relative, on the
    outputs and the gradients of q, k, v and both gates (states stay float32 inside the fast path). Gates at the
    scale of a trained layer (ĩ ~ N(0, 1), f̃ ~ N(3, 1), xlstm's forget bias is 3-6): with |ĩ| ~ 10 the outputs
    reach near-cancelling normalisers n·q, where both forms lose digits in proportion to that conditioning in
    their own summation order (float32 measured: 1e-5 against 2e-6 relative)."""
    xs, st = make(63, seed=4)
    xs[3], xs[4] = xs[3] / 3, (xs[4] - 2) / 3 + 3
    ref = run(naive.mlstm_recurrent, xs, st, False)
    low = [x.to(dtype) for x in xs]
    fast = run(chunked.mlstm_chunked, low, st, False, chunk_size=16)
    slow = run(naive.mlstm_recurrent, low, st, False)
    for idx in (0, 4, 5, 6, 7, 8):
        e_fast, e_slow = rel_err(fast[idx], ref[idx]), rel_err(slow[idx], ref[idx])
        assert e_fast <= 2 * e_slow + floor, f"{NAMES[idx]}: fast {e_fast:.2e} vs recurrence {e_slow:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("f_bias", [-30.0, 30.0], ids=["log_f=-30", "log_f=0"])
def test_long_sequence_extreme_decays_finite(dtype, f_bias):
    """T = 65536, log f ≈ −30 (forget at once) or ≈ −1e-13 (remember everything), input gates up to ±20: finite
    outputs and final state, under bf16 autocast too; finite gradients (float32: the bf16 backward is the same
    code with bf16 matmul operands, and bf16 matmuls are slow on CPUs without AVX-512 BF16)."""
    t, d = 65536, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, t, d, generator=g).to(dtype).requires_grad_(True) for _ in range(3))
    i_pre = (20 * torch.rand(1, 1, t, generator=g) * 2 - 20).requires_grad_(True)
    f_pre = (f_bias + torch.randn(1, 1, t, generator=g)).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        h, (c, n, m) = chunked.mlstm_chunked(q, k, v, i_pre, f_pre, chunk_size=64, output_final_state=True)
    assert h.dtype == dtype and c.dtype == n.dtype == m.dtype == torch.float32
    assert torch.isfinite(h).all() and torch.isfinite(c).all() and torch.isfinite(m).all()
    if dtype == torch.float32:
        grads = torch.autograd.grad(h.float().square().mean(), (q, k, v, i_pre, f_pre))
        assert all(torch.isfinite(x).all() for x in grads)


def test_errors_name_the_argument():
    (q, k, v, i_pre, f_pre), (c0, n0, m0) = make(5)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.mlstm_chunked(q, k, v, i_pre, f_pre, chunk_size=0)
    with pytest.raises(ValueError, match="i_pre, f_pre"):
        chunked.mlstm_chunked(q, k, v, i_pre[..., :3], f_pre, chunk_size=4)
    with pytest.raises(ValueError, match="initial_state"):
        chunked.mlstm_chunked(q, k, v, i_pre, f_pre, chunk_size=4, initial_state=(c0, n0, m0[..., None]))


def test_segsum_is_a_masked_cumsum():
    x = torch.randn(2, 6, dtype=torch.float64)
    s = chunked.segsum(x)
    for t in range(6):
        for j in range(6):
            want = x[:, j + 1:t + 1].sum(-1) if j <= t else torch.full((2,), float("-inf"), dtype=torch.float64)
            torch.testing.assert_close(s[:, t, j], want)
    assert F.logsigmoid(torch.tensor(30.0)).item() > -1e-12  # the "log f ≈ 0" case above is what it says
