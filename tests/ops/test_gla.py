"""ops/gla: the chunked gated (vector-decay) linear attention against the recurrence, in float64 (outputs, final
state and every gradient: q, k, v, the log-decays, the bonus u and the initial state), for GLA's inclusive read and
RWKV-6's exclusive read with bonus, at odd lengths with chunks that do not divide T; decays at both extremes; the
decoding step; continuing from a state; bf16 within budget; finite outputs at T = 65536 with log-decays near −30
and near 0."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.gla import chunked, naive, recurrent

B, H, DK, DV = 2, 3, 5, 6


def inputs(t: int, seed: int = 0, low: float = -2.0, high: float = 0.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, t, DK, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, t, DV, generator=gen, dtype=torch.float64)
    g = low + (high - low) * torch.rand(B, H, t, DK, generator=gen, dtype=torch.float64)  # log-decays
    u = torch.randn(H, DK, generator=gen, dtype=torch.float64)
    s0 = torch.randn(B, H, DK, DV, generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, g, u, s0)]


def run(fn, tensors, bonus: bool, go, gs, **kw):
    q, k, v, g, u, s0 = (x.detach().clone().requires_grad_(True) for x in tensors)
    o, s = fn(q, k, v, g, u=u if bonus else None, initial_state=s0, output_final_state=True, **kw)
    loss = (o.double() * go).sum() + (s.double() * gs).sum()
    leaves = [q, k, v, g, s0] + ([u] if bonus else [])
    return [o.detach(), s.detach(), *torch.autograd.grad(loss, leaves)]


def compare(tensors, bonus, chunk_size, tol, scale=0.7):
    t = tensors[0].shape[2]
    gen = torch.Generator().manual_seed(9)
    go = torch.randn(B, H, t, DV, generator=gen, dtype=torch.float64)
    gs = torch.randn(B, H, DK, DV, generator=gen, dtype=torch.float64)
    ref = run(naive.recurrent_gla, tensors, bonus, go, gs, scale=scale)
    fast = run(chunked.chunk_gla, tensors, bonus, go, gs, scale=scale, chunk_size=chunk_size)
    names = ["o", "S_T", "dq", "dk", "dv", "dg", "dS_0", "du"]
    for name, a, b in zip(names, fast, ref):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
@pytest.mark.parametrize("t,chunk_size", [(1, 4), (7, 4), (63, 16), (257, 64), (257, 8)])
def test_chunked_equals_recurrence(bonus, t, chunk_size):
    compare(inputs(t), bonus, chunk_size, 1e-10)


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
@pytest.mark.parametrize("low,high", [(-40.0, -20.0), (-1e-6, 0.0), (-200.0, 0.0)])
def test_extreme_decays(bonus, low, high):
    """Log-decays near −30 (nothing survives a token: exp(±cumulative) alone would over/underflow), near 0 (a
    plain cumulative sum) and mixed up to −200 (exclusive reads must never form exp(−g_t))."""
    compare(inputs(63, seed=3, low=low, high=high), bonus, 16, 1e-9)


def test_group_boundaries(monkeypatch):
    """Several groups of chunks (the state carried between groups in the forward and dS in the backward)."""
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", B * H * 4 * DV * 2)  # two chunks of 4 per group
    for bonus in (False, True):
        compare(inputs(37, seed=5), bonus, 4, 1e-10)


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
def test_step_and_continuation_equal_the_recurrence(bonus):
    q, k, v, g, u, s0 = inputs(23, seed=1)
    uu = u if bonus else None
    ref, s_ref = naive.recurrent_gla(q, k, v, g, scale=0.5, u=uu, initial_state=s0, output_final_state=True)
    s, outs = s0, []
    for i in range(23):
        o, s = recurrent.gla_step(q[:, :, i], k[:, :, i], v[:, :, i], g[:, :, i], s, scale=0.5, u=uu)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 2), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
    head, s_mid = chunked.chunk_gla(q[:, :, :10], k[:, :, :10], v[:, :, :10], g[:, :, :10], scale=0.5, u=uu,
                                    chunk_size=4, initial_state=s0, output_final_state=True)
    tail, s_end = chunked.chunk_gla(q[:, :, 10:], k[:, :, 10:], v[:, :, 10:], g[:, :, 10:], scale=0.5, u=uu,
                                    chunk_size=4, initial_state=s_mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([head, tail], 2), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_end, s_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
def test_bf16_within_budget(bonus):
    """bf16 operands (float32 gates and states): outputs and gradients within 3 % (relative norm) of float64."""
    tensors = inputs(130, seed=2, low=-1.0)
    t = 130
    gen = torch.Generator().manual_seed(9)
    go = torch.randn(B, H, t, DV, generator=gen, dtype=torch.float64)
    gs = torch.randn(B, H, DK, DV, generator=gen, dtype=torch.float64)
    ref = run(naive.recurrent_gla, tensors, bonus, go, gs)
    low = [x.to(torch.bfloat16) if i < 3 else x.float() for i, x in enumerate(tensors)]
    fast = run(chunked.chunk_gla, low, bonus, go, gs, chunk_size=16)
    assert fast[0].dtype == torch.bfloat16 and fast[1].dtype == torch.float32
    for name, a, b in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS_0", "du"], fast, ref):
        rel = (a.double() - b).norm() / b.norm()
        assert rel < 0.03, f"{name}: bf16 relative error {rel:.3g}"


def test_chunk_size_must_be_a_power_of_two():
    q, k, v, g, _, _ = inputs(8)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.chunk_gla(q, k, v, g, chunk_size=6)
    with pytest.raises(ValueError, match="initial_state"):
        chunked.chunk_gla(q, k, v, g, initial_state=torch.zeros(B, H, DK, DK))


@pytest.mark.slow
@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv6"])
def test_long_sequence_finite(bonus):
    """T = 65536 (B = 1, one head, d = 8) with log-decays near −30 on half the channels and near 0 on the others:
    the forward in float32 and under bf16 autocast gives finite outputs and final states, the float32 backward
    finite gradients; and with log-decay −30 only the newest terms survive (GLA: the current token; RWKV-6: the
    bonus term plus the previous token, which the exclusive read has not decayed yet)."""
    t, d = 65536, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, t, d, generator=gen).requires_grad_(True) for _ in range(3))
    g = torch.cat([torch.full((1, 1, t, d // 2), -30.0), torch.full((1, 1, t, d // 2), -1e-7)], -1)
    g.requires_grad_(True)
    u = torch.ones(1, d, requires_grad=True) if bonus else None
    o, s = chunked.chunk_gla(q, k, v, g, u=u, chunk_size=64, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    (o.square().mean() + s.square().mean()).backward()
    for x in (q, k, v, g):
        assert torch.isfinite(x.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        o16, s16 = chunked.chunk_gla(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, u=u, chunk_size=64,
                                     output_final_state=True)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert torch.isfinite(o16).all() and torch.isfinite(s16).all()
    # the fast channels alone (the slow ones' queries zeroed)
    n = 256
    qf, kf, vf = q.detach()[:, :, :n].clone(), k.detach()[:, :, :n], v.detach()[:, :, :n]
    qf[..., d // 2:] = 0
    with torch.no_grad():
        of, _ = chunked.chunk_gla(qf, kf, vf, g.detach()[:, :, :n], u=u, chunk_size=64)
    if bonus:
        own = (qf * u.detach() * kf).sum(-1, keepdim=True) * vf
        own[:, :, 1:] += (qf[:, :, 1:] * kf[:, :, :-1]).sum(-1, keepdim=True) * vf[:, :, :-1]
    else:
        own = (qf * kf).sum(-1, keepdim=True) * vf
    torch.testing.assert_close(of, own, rtol=1e-5, atol=1e-5)
