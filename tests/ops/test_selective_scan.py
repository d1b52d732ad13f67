"""ops/selective_scan: the chunked fast path against the recurrence oracle in float64 (outputs, final state and
every gradient, with an initial state, odd lengths and chunk sizes that do not divide T), the one-token step, the
memory promise (nothing of size [B, T, E, N] kept for the backward), and finite outputs and gradients at T = 65536
with decays at both extremes, in float32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightformer.ops.selective_scan import chunked, naive, recurrent

E, N = 5, 3


def scan_inputs(b: int, t: int, e: int = E, n: int = N, dtype=torch.float64, seed: int = 0, log_decay=None):
    """u, Δ (softplus of a normal: ~0.1 .. 3), A < 0, B, C, D, h0; ``log_decay`` fixes Δ·A's scale instead."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, B, C, D, h0 = r(b, t, e), r(b, t, n), r(b, t, n), r(e), r(b, e, n)
    delta = F.softplus(r(b, t, e))
    A = -torch.rand(e, n, generator=g, dtype=torch.float64) * 2 - 0.05
    if log_decay is not None:  # Δ = 1 and A = log_decay (± 10 %): exp(Δ·A) = exp(log_decay) everywhere
        delta = torch.ones(b, t, e, dtype=torch.float64)
        A = log_decay * (1 + 0.1 * (torch.rand(e, n, generator=g, dtype=torch.float64) - 0.5))
    return [x.to(dtype) for x in (u, delta, A, B, C, D, h0)]


def run(fn, xs, gy, gh, with_h0=True):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    u, delta, A, B, C, D, h0 = xs
    y, h = fn(u, delta, A, B, C, D, initial_state=h0 if with_h0 else None, output_final_state=True)
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), xs if with_h0 else xs[:-1])
    return [y, h, *grads]


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zeros"])
@pytest.mark.parametrize("t,chunk", [(1, 4), (7, 3), (63, 16), (257, 32), (257, 64)])
def test_chunked_equals_recurrence(t, chunk, with_h0):
    """float64: outputs, h_T and the gradients of u, Δ, A, B, C, D and h_0 equal the naive loop."""
    xs = scan_inputs(2, t)
    g = torch.Generator().manual_seed(5)
    gy = torch.randn(2, t, E, generator=g, dtype=torch.float64)
    gh = torch.randn(2, E, N, generator=g, dtype=torch.float64)
    want = run(naive.selective_scan, xs, gy, gh, with_h0)
    got = run(lambda *a, **k: chunked.selective_scan(*a, chunk_size=chunk, **k), xs, gy, gh, with_h0)
    names = ["y", "h_T", "du", "dΔ", "dA", "dB", "dC", "dD", "dh0"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name} (T={t}): {m}")


@pytest.mark.parametrize("t,chunk,working_set", [(63, 16, 100), (257, 64, 200), (9, 4, 1)])
def test_sub_chunks_equal_recurrence(monkeypatch, t, chunk, working_set):
    """float64, with ``WORKING_SET`` shrunk so that chunks split into sub-chunks of 3, 6 and 2 tokens (one token's
    slice is B·N·E = 30 elements): outputs, h_T and every gradient still equal the naive loop."""
    monkeypatch.setattr(chunked, "WORKING_SET", working_set)
    assert chunked.sub_chunk(chunk, 2 * N * E) == max(2, working_set // 30)
    xs = scan_inputs(2, t)
    g = torch.Generator().manual_seed(6)
    gy = torch.randn(2, t, E, generator=g, dtype=torch.float64)
    gh = torch.randn(2, E, N, generator=g, dtype=torch.float64)
    want = run(naive.selective_scan, xs, gy, gh)
    got = run(lambda *a, **k: chunked.selective_scan(*a, chunk_size=chunk, **k), xs, gy, gh)
    for name, a, b in zip(["y", "h_T", "du", "dΔ", "dA", "dB", "dC", "dD", "dh0"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name} (T={t}): {m}")


def test_sub_chunk_size():
    """A chunk is split only when its buffer would exceed WORKING_SET elements; never below 2 tokens, never above
    the chunk."""
    ws = chunked.WORKING_SET
    assert chunked.sub_chunk(64, 1 * 16 * 1024) == 64  # Mamba at D = 512, B = 1: whole chunks
    assert chunked.sub_chunk(64, 256 * 16 * 128) == 2  # the probes' B = 256, E = 128
    assert chunked.sub_chunk(64, 32 * 16 * 128) == ws // (32 * 16 * 128) == 16
    assert chunked.sub_chunk(64, ws * 8) == 2 and chunked.sub_chunk(1, ws * 8) == 1 and chunked.sub_chunk(3, 1) == 3


def test_float32_and_bf16_inputs_keep_a_float32_scan():
    """float32 inputs: within 2x the oracle's own float32 error (+ floor) of the float64 oracle; bf16 inputs give
    bf16 outputs and a float32 final state."""
    xs = scan_inputs(2, 257)
    ref_y, ref_h = naive.selective_scan(*xs[:6], initial_state=xs[6], output_final_state=True)
    x32 = [x.float() for x in xs]
    y, h = chunked.selective_scan(*x32[:6], initial_state=x32[6], output_final_state=True, chunk_size=16)
    y_o, h_o = naive.selective_scan(*x32[:6], initial_state=x32[6], output_final_state=True)
    for fast, slow, ref in ((y, y_o, ref_y), (h, h_o, ref_h)):
        assert (fast.double() - ref).abs().max() <= 2 * (slow.double() - ref).abs().max() + 1e-5
    x16 = [x.bfloat16() for x in xs]
    y16, h16 = chunked.selective_scan(*x16[:6], initial_state=x16[6], output_final_state=True)
    assert y16.dtype == torch.bfloat16 and h16.dtype == torch.float32


def test_step_equals_recurrence():
    xs = scan_inputs(2, 9)
    u, delta, A, B, C, D, h0 = xs
    want, want_h = naive.selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)
    h, ys = h0.clone(), []
    for i in range(9):
        y, h_new = recurrent.selective_scan_step(u[:, i], delta[:, i], A, B[:, i], C[:, i], D, h)
        ys.append(y)
        h = h_new
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, want_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h0, xs[6])  # the step never writes into the state it was given


def test_no_full_size_tensor_is_kept_for_backward():
    """What autograd keeps between forward and backward is O(T·E + (T/L)·E·N), not O(T·E·N)."""
    b, t, e, n, chunk = 1, 1024, 32, 16, 64
    xs = [x.float().requires_grad_(True) for x in scan_inputs(b, t, e, n)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        y, _ = chunked.selective_scan(*xs[:6], chunk_size=chunk)
    full = b * t * e * n
    assert max(saved) < full / 4, f"a saved tensor of {max(saved)} elements (full [B, T, E, N] = {full})"
    assert sum(saved) < full / 2


def test_bad_arguments():
    xs = scan_inputs(1, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.selective_scan(*xs[:6], chunk_size=0)
    with pytest.raises(ValueError, match="shapes"):
        chunked.selective_scan(xs[0], xs[1][:, :3], *xs[2:6])
    with pytest.raises(ValueError, match="initial_state"):
        chunked.selective_scan(*xs[:6], initial_state=xs[6][:, :2])


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_long_sequence_extreme_decays_stay_finite(bf16):
    """T = 65536 with per-token log-decays Δ·A near −30 (channel 0: the state forgets at once) and near 0
    (channel 1: it sums all 65536 inputs): finite outputs and final state in float32 and with bf16 inputs under
    autocast, and finite gradients (float32; the backward is the same float32 code for both)."""
    t = 65536
    xs = [x.float() for x in scan_inputs(1, t, 2, 2)]
    xs[1] = torch.ones(1, t, 2)  # Δ = 1, so Δ·A = A
    xs[2] = torch.tensor([[-30.0, -29.0], [-1e-4, -2e-4]])  # A [E, N]
    xs = [x.requires_grad_(not bf16) for x in xs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ins = [x.bfloat16() if bf16 and i != 2 else x for i, x in enumerate(xs[:6])]
        y, h = chunked.selective_scan(*ins, output_final_state=True, chunk_size=256)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert h.dtype == torch.float32
    assert h[0, 1].abs().max() > 10 * h[0, 0].abs().max()  # decay ~1 accumulates, decay e^-30 forgets
    if not bf16:
        grads = torch.autograd.grad(y.sum() + h.sum(), xs[:6])
        assert all(torch.isfinite(g).all() for g in grads)
