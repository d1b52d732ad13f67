"""ops/delta: the chunkwise WY form of the (gated) delta rule against the recurrence (outputs, final state and every
gradient including the initial state's, float64, odd lengths, chunks that do not divide T), its float32/bf16 error
budget, prefill + decoding steps, extreme decays at T = 65536, and the UT transform's inverse when β → 1 with
near-parallel keys (where fla #99/#111 reported NaN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightformer.ops.delta import chunked, naive, recurrent

from oracle_check import assert_fast_matches_naive

DK, DV = 5, 6


def make(t: int, gated: bool, seed: int = 0, b: int = 2, h: int = 3, dtype=torch.float64):
    """Unit-norm q, k, values, β in (0, 1), log-decays in (−2, 0) (or None) and an initial state."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = F.normalize(rnd(b, h, t, DK), dim=-1), F.normalize(rnd(b, h, t, DK), dim=-1)
    v, beta = rnd(b, h, t, DV), torch.rand(b, h, t, generator=gen, dtype=torch.float64)
    g = -2 * torch.rand(b, h, t, generator=gen, dtype=torch.float64) if gated else None
    s0 = rnd(b, h, DK, DV)
    return [None if x is None else x.to(dtype) for x in (q, k, v, beta, g, s0)]


def outputs_and_grads(fn, inputs, seed: int = 5):
    """fn(q, k, v, beta, g, s0) -> (o, S_T); returns [o, S_T, d/dq, d/dk, d/dv, d/dβ, d/dg, d/dS_0] for a random
    cotangent on both outputs."""
    leaves = [None if x is None else x.detach().clone().requires_grad_(True) for x in inputs]
    o, s = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + \
        (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    used = [x for x in leaves if x is not None]
    return [o.detach(), s.detach(), *torch.autograd.grad(loss, used)]


def naive_fn(q, k, v, beta, g, s0):
    return naive.delta_rule_recurrence(q, k, v, beta, g, initial_state=s0, output_final_state=True)


def chunked_fn(chunk_size):
    def fn(q, k, v, beta, g, s0):
        return chunked.chunk_delta_rule(q, k, v, beta, g, initial_state=s0, output_final_state=True,
                                        chunk_size=chunk_size)
    return fn


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize("t,chunk", [(1, 4), (7, 3), (63, 16), (257, 32), (20, 64), (9, 1)])
def test_chunked_equals_recurrence_float64(gated, t, chunk):
    """Outputs, the final state and the gradients of q, k, v, β, g and S_0 equal the recurrence to rounding."""
    inputs = make(t, gated)
    ref = outputs_and_grads(naive_fn, inputs)
    fast = outputs_and_grads(chunked_fn(chunk), inputs)
    assert len(fast) == len(ref) == (8 if gated else 7)
    for i, (a, b) in enumerate(zip(fast, ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"item {i}")


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_several_checkpointed_groups_equal_recurrence(monkeypatch, gated):
    """Chunks run in checkpointed groups bounded by GROUP_ELEMENTS; shrink it so that T = 63 with 4-token chunks
    spans 8 groups of 2 chunks (state carried across groups, ragged padded tail), float64, every gradient."""
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", 2 * 3 * 4 * 6 * 2)
    assert chunked.group_tokens(2, 3, 6, 4, 64) == 8
    inputs = make(63, gated)
    for a, b in zip(outputs_and_grads(chunked_fn(4), inputs), outputs_and_grads(naive_fn, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_without_initial_state_and_default_scale():
    q, k, v, beta, g, _ = make(11, gated=True)
    o_ref, s_ref = naive.delta_rule_recurrence(q, k, v, beta, g, output_final_state=True)
    o, s = chunked.chunk_delta_rule(q, k, v, beta, g, chunk_size=4, output_final_state=True)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
    assert chunked.chunk_delta_rule(q, k, v, beta, g, chunk_size=4)[1] is None
    o2, _ = naive.delta_rule_recurrence(q, k, v, beta, g, scale=2 * DK ** -0.5)
    torch.testing.assert_close(o2, 2 * o_ref, rtol=1e-12, atol=1e-12)  # o is linear in the scale of q


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_low_precision_error_budget(gated, dtype):
    """fast at dtype vs the float64 oracle: at most 2x the oracle's own error at dtype (plus a floor), outputs and
    gradients, through the maps the mixers apply (L2 norm of q, k; sigmoid β; −softplus log-decay)."""
    t = 77
    q, k, v, beta, g, _ = make(t, gated)
    braw = torch.logit(beta)
    graw = torch.randn_like(braw)

    def wrap(op):
        def fn(q, k, v, braw, *graw):
            log_a = -F.softplus(graw[0]) if gated else None
            return op(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, torch.sigmoid(braw), log_a)[0]
        return fn

    fast = wrap(lambda *a: chunked.chunk_delta_rule(*a, chunk_size=16))
    oracle = wrap(naive.delta_rule_recurrence)
    assert_fast_matches_naive(fast, oracle, [q, k, v, braw, *([graw] if gated else [])], dtype)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_prefill_then_steps_equals_recurrence(gated):
    """A chunked prefill of 13 tokens hands its state to the one-token step, which continues exactly."""
    q, k, v, beta, g, s0 = make(30, gated)
    o_ref, s_ref = naive.delta_rule_recurrence(q, k, v, beta, g, initial_state=s0, output_final_state=True)
    cut = 13
    o_head, s = chunked.chunk_delta_rule(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], beta[:, :, :cut],
                                         None if g is None else g[:, :, :cut], initial_state=s0,
                                         output_final_state=True, chunk_size=4)
    outs = [o_head]
    for i in range(cut, 30):
        s_before = s.clone()
        o_i, s_new = recurrent.delta_rule_step(q[:, :, i], k[:, :, i], v[:, :, i], beta[:, :, i],
                                               None if g is None else g[:, :, i], s, scale=DK ** -0.5)
        torch.testing.assert_close(s, s_before, rtol=0, atol=0)  # the step does not modify its state
        s = s_new
        outs.append(o_i[:, :, None])
    torch.testing.assert_close(torch.cat(outs, dim=2), o_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(s, s_ref, rtol=1e-11, atol=1e-11)


def test_zero_beta_and_decay_leave_the_state_unchanged():
    """β = 0, g = 0 tokens (padding, the chunk tail) neither write nor decay."""
    q, k, v, beta, g, s0 = make(10, gated=True)
    beta, g = beta.clone(), g.clone()
    beta[:, :, 4:], g[:, :, 4:] = 0.0, 0.0
    _, s_all = chunked.chunk_delta_rule(q, k, v, beta, g, initial_state=s0, output_final_state=True, chunk_size=3)
    _, s_4 = naive.delta_rule_recurrence(q[:, :, :4], k[:, :, :4], v[:, :, :4], beta[:, :, :4], g[:, :, :4],
                                         initial_state=s0, output_final_state=True)
    torch.testing.assert_close(s_all, s_4, rtol=1e-12, atol=1e-12)


def test_state_stays_float32_under_bf16():
    q, k, v, beta, g, s0 = make(9, gated=True, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, s = chunked.chunk_delta_rule(q, k, v, beta, g, initial_state=s0.float(), output_final_state=True,
                                        chunk_size=4)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


def test_bad_arguments_name_them():
    q, k, v, beta, g, s0 = make(5, gated=False)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.chunk_delta_rule(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        chunked.chunk_delta_rule(q, k, v, beta, initial_state=s0[..., :2])


def near_parallel_chunk(c: int, noise: float, dtype=torch.float32, seed: int = 0):
    """C unit keys within ~noise of one direction, β = sigmoid(20) (1 in float32), log-decays ≈ −1e-6."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 1, 1, 16, generator=gen, dtype=torch.float64)
    k = F.normalize(base + noise * torch.randn(1, 1, c, 16, generator=gen, dtype=torch.float64), dim=-1)
    beta = torch.sigmoid(torch.full((1, 1, c), 20.0, dtype=torch.float64))
    g = torch.full((1, 1, c), -1e-6, dtype=torch.float64)
    return k.to(dtype), beta.to(dtype), g.to(dtype)


@pytest.mark.parametrize("noise", [1e-2, 1e-4, 0.0])
@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_ut_inverse_finite_and_accurate_near_parallel_keys(noise, gated):
    """β → 1 with near-parallel (or identical) keys makes I + A = I + tril(β K Kᵀ ⊙ e^Γ, −1) close to the
    all-ones lower triangle: its inverse stays finite and bounded (close to the bidiagonal (1, −1)), float32
    matches float64, and (I + A)·T = I to float32 rounding."""
    c = 64
    k64, beta64, g64 = near_parallel_chunk(c, noise, torch.float64)

    def a_of(k, beta, g):
        a = (k * beta[..., None]) @ k.transpose(-1, -2)
        return a * chunked.segment_sums(g).exp() if gated else a

    t64 = chunked.ut_transform(a_of(k64, beta64, g64))
    a32 = a_of(*(x.float() for x in (k64, beta64, g64)))
    t32 = chunked.ut_transform(a32)
    assert torch.isfinite(t32).all()
    assert t32.abs().max() < 10  # bounded: no growth with C
    eye = torch.eye(c)
    residual = (eye + a32.tril(-1)) @ t32 - eye
    assert residual.abs().max() < 1e-4, f"(I + A)T − I = {residual.abs().max():.3g}"
    assert (t32.double() - t64).abs().max() < 1e-3


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_near_parallel_keys_full_op_float32(gated):
    """The whole op on runs of near-parallel keys with β → 1 (several chunks): finite, and float32 within 2x the
    float32 recurrence's error of the float64 recurrence (plus a floor), outputs and the final state."""
    c, n = 16, 4
    ks, betas, gs = zip(*(near_parallel_chunk(c, 1e-3, torch.float64, seed=i) for i in range(n)))
    k, beta, g = torch.cat(ks, 2), torch.cat(betas, 2), torch.cat(gs, 2)
    gen = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(k.shape, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 1, c * n, 8, generator=gen, dtype=torch.float64)
    g = g if gated else None
    ref = naive.delta_rule_recurrence(q, k, v, beta, g, output_final_state=True)
    low = [None if x is None else x.float() for x in (q, k, v, beta, g)]
    fast = chunked.chunk_delta_rule(*low, output_final_state=True, chunk_size=c)
    slow = naive.delta_rule_recurrence(*low, output_final_state=True)
    for f, s, r in zip(fast, slow, ref):
        assert torch.isfinite(f).all()
        e_fast, e_slow = (f.double() - r).abs().max().item(), (s.double() - r).abs().max().item()
        assert e_fast <= 2 * e_slow + 1e-5 * max(1.0, r.abs().max().item()), f"{e_fast:.3g} vs {e_slow:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_long_sequence_extreme_decays_finite(dtype):
    """T = 65536 (1024 chunks) with log α near −30 in head 0 (every step forgets) and near 0 in head 1 (nothing is
    forgotten): outputs and the final state stay finite, in float32 and under bf16 autocast, and so does the
    gradient of the log-decays over the first 4096 tokens (float32). Head 0 only sees its own token: o_t = β_t (q_t·k_t) v_t / sqrt(d)."""
    t, d = 65536, 4
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(1, 2, t, d, generator=gen), dim=-1).to(dtype)
    k = F.normalize(torch.randn(1, 2, t, d, generator=gen), dim=-1).to(dtype)
    v = torch.randn(1, 2, t, d, generator=gen).to(dtype)
    beta = torch.rand(1, 2, t, generator=gen).to(dtype)
    extremes = torch.tensor([-30.0, -1e-4])[None, :, None]
    g = (extremes * (1 + 0.1 * torch.rand(1, 2, t, generator=gen))).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        o, s = chunked.chunk_delta_rule(q, k, v, beta, g, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    expect = beta[..., None].float() * (q.float() * k.float()).sum(-1, keepdim=True) * v.float() * d ** -0.5
    torch.testing.assert_close(o[:, 0].float(), expect[:, 0], rtol=2e-2, atol=2e-2)
    if dtype == torch.float32:
        n = 4096
        o, s = chunked.chunk_delta_rule(q[:, :, :n], k[:, :, :n], v[:, :, :n], beta[:, :, :n], g[:, :, :n],
                                        output_final_state=True)
        (dg,) = torch.autograd.grad(o.sum() + s.sum(), g)
        assert torch.isfinite(dg).all() and dg[:, :, :n].abs().sum() > 0
