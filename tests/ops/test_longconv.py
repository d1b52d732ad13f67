"""ops/longconv: the FFT convolution and the parallel SSM / LTI forms against their naive oracles in float64 (outputs,
final states and every gradient, with and without an initial state, at T in {1, 7, 63, 257}: the blockwise
Vandermonde products use blocks that do not divide these T), float32 / bf16 error budgets, the kernel generators
(ZOH, impulse response, Vandermonde), and finite outputs at T = 65536 with decays at both extremes."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.longconv import fft, kernels, naive

from oracle_check import assert_fast_matches_naive

LENGTHS = (1, 7, 63, 257)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def crand(*shape, seed=0):
    return torch.complex(rand(*shape, seed=seed), rand(*shape, seed=seed + 100))


def assert_grads_match(fast, ref, inputs, outs_fast, outs_ref, tol=1e-9):
    for a, b in zip(outs_fast, outs_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    loss_f = sum((o * w).real.sum() for o, w in zip(outs_fast, fast))
    loss_r = sum((o * w).real.sum() for o, w in zip(outs_ref, ref))
    g_f = torch.autograd.grad(loss_f, inputs, retain_graph=True)
    g_r = torch.autograd.grad(loss_r, inputs, retain_graph=True)
    for i, (a, b) in enumerate(zip(g_f, g_r)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"gradient {i}: {m}")


# -- the FFT convolution ------------------------------------------------------------------------------------------
def test_fast_size():
    assert [fft.fast_size(n) for n in (1, 2, 7, 11, 13, 97, 131071, 65599)] == [1, 2, 8, 12, 15, 100, 131072, 65610]


@pytest.fixture(params=["one_block", "channel_blocks"])
def blocks(request, monkeypatch):
    """The FFT convolution in one channel block, or in blocks of one or two channels (a ragged last one)."""
    if request.param == "channel_blocks":
        monkeypatch.setattr(fft, "BLOCK_ELEMENTS", 1)
    return request.param


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("klen", ["full", "short"])
def test_causal_conv_matches_naive(t, klen, blocks):
    lk = t if klen == "full" else 5
    u = rand(2, 3, t, seed=1).requires_grad_(True)
    k = rand(3, lk, seed=2).requires_grad_(True)
    y, y_ref = fft.causal_conv(u, k), naive.causal_conv(u, k)
    assert y.shape == (2, 3, t)
    assert_grads_match([rand(2, 3, t, seed=3)], [rand(2, 3, t, seed=3)], (u, k), [y], [y_ref])


def test_causal_conv_broadcasts_one_input_over_kernels(blocks):
    """u [B, M, 1, T] with k [d, L] -> [B, M, d, T] (the LMU's one input per memory); gradients summed back."""
    u = rand(2, 3, 1, 40, seed=1).requires_grad_(True)
    k = rand(5, 40, seed=2).requires_grad_(True)
    y, y_ref = fft.causal_conv(u, k), naive.causal_conv(u, k)
    assert y.shape == (2, 3, 5, 40)
    g = rand(2, 3, 5, 40, seed=3)
    assert_grads_match([g], [g], (u, k), [y], [y_ref])


def test_causal_conv_is_causal_and_strided_inputs_work():
    u = rand(1, 40, 4, seed=1).transpose(1, 2)  # [1, 4, 40], a strided view as the mixers pass it
    k = rand(4, 40, seed=2)
    y = fft.causal_conv(u, k)
    u2 = u.clone()
    u2[..., 20:] = 5.0
    torch.testing.assert_close(fft.causal_conv(u2, k)[..., :20], y[..., :20], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_causal_conv_error_budget(dtype):
    """fast at dtype vs float64 oracle <= 2 x (naive at dtype vs the oracle) + floor, outputs and gradients."""
    for t in (7, 257):
        u, k = rand(2, 3, t, seed=1), rand(3, t, seed=2) * 0.3
        assert_fast_matches_naive(fft.causal_conv, naive.causal_conv, (u, k), dtype)


# -- the diagonal SSM (S4D, H3) -----------------------------------------------------------------------------------
def ssm_params(c=3, n=4, seed=0):
    a = torch.complex(-torch.exp(rand(c, n, seed=seed) * 0.5), rand(c, n, seed=seed + 1) * 3)
    dt = torch.exp(rand(c, 1, seed=seed + 2) - 2.0)
    dtA = dt * a
    b_bar = (torch.exp(dtA) - 1) / a
    return dtA, b_bar, crand(c, n, seed=seed + 3)


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_diag_ssm_matches_recurrence(t, with_state, blocks):
    dtA, b_bar, c = (p.clone().requires_grad_(True) for p in ssm_params())
    u = rand(2, 3, t, seed=5).requires_grad_(True)
    x0 = crand(2, 3, 4, seed=6).requires_grad_(True) if with_state else None
    y, xt = fft.diag_ssm(u, dtA, b_bar, c, initial_state=x0, output_final_state=True)
    y_ref, xt_ref = naive.diag_ssm(u, dtA, b_bar, c, initial_state=x0, output_final_state=True)
    inputs = (u, dtA, b_bar, c) + ((x0,) if with_state else ())
    w = [rand(2, 3, t, seed=7), crand(2, 3, 4, seed=8)]
    assert_grads_match(w, w, inputs, [y, xt], [y_ref, xt_ref])


def test_causal_conv_refuses_other_shapes():
    with pytest.raises(ValueError, match="k must be"):
        fft.causal_conv(rand(2, 3, 8), rand(2, 8))


def test_diag_ssm_leading_dims(blocks):
    """u [B, d, d, H, T] (h3's per-head outer products) with parameters [H, N]."""
    dtA, b_bar, c = ssm_params()
    u = rand(2, 2, 2, 3, 9, seed=5)
    x0 = crand(2, 2, 2, 3, 4, seed=6)
    y, xt = fft.diag_ssm(u, dtA, b_bar, c, initial_state=x0, output_final_state=True)
    y_ref, xt_ref = naive.diag_ssm(u, dtA, b_bar, c, initial_state=x0, output_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xt, xt_ref, rtol=1e-10, atol=1e-10)


def test_vandermonde_equals_the_plain_sum():
    dtA, _, c = ssm_params(n=5)
    for length in (1, 5, 33, 100):
        lag = torch.arange(length, dtype=torch.float64)
        plain = 2 * (c[..., None] * torch.exp(dtA[..., None] * lag)).sum(1).real
        torch.testing.assert_close(kernels.vandermonde(c, dtA, length), plain, rtol=1e-12, atol=1e-12)
        u = rand(2, 3, length, seed=4)
        plain_t = (torch.exp(dtA[..., None] * lag) * u[:, :, None, :]).sum(-1)
        torch.testing.assert_close(kernels.vandermonde_transpose(u, dtA), plain_t, rtol=1e-12, atol=1e-12)


# -- the LTI memory (LMU) -----------------------------------------------------------------------------------------
def test_zoh_of_the_legendre_system():
    """Ā = exp(A), B̄ = A⁻¹(Ā − I)B (A is invertible); the continuous A of the paper's Eq. 2 for order 3."""
    a, b = kernels.legendre_lti(3, 2.0)
    expected_a = torch.tensor([[-1.0, -1.0, -1.0], [3.0, -3.0, -3.0], [-5.0, 5.0, -5.0]], dtype=torch.float64) / 2
    torch.testing.assert_close(a, expected_a)
    torch.testing.assert_close(b, torch.tensor([1.0, -3.0, 5.0], dtype=torch.float64) / 2)
    a, b = kernels.legendre_lti(12, 7.0)
    ab, bb = kernels.zoh(a, b, 1.0)
    torch.testing.assert_close(ab, torch.linalg.matrix_exp(a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bb, torch.linalg.solve(a, (ab - torch.eye(12, dtype=a.dtype)) @ b),
                               rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvals(ab).abs().max() < 1  # stable


def test_impulse_and_powers():
    a, b = kernels.legendre_lti(5, 4.0)
    ab, bb = kernels.zoh(a, b)
    h = kernels.lti_impulse(ab, bb, 13)
    for t in (0, 1, 6, 12):
        torch.testing.assert_close(h[:, t], torch.linalg.matrix_power(ab, t) @ bb, rtol=1e-12, atol=1e-14)
    pw = kernels.lti_powers(ab, 7)
    torch.testing.assert_close(pw[6], torch.linalg.matrix_power(ab, 7), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_lti_memory_matches_recurrence(t, with_state, blocks):
    a, b = kernels.legendre_lti(6, 5.0)
    ab, bb = kernels.zoh(a, b)
    u = rand(2, 3, t, seed=1).requires_grad_(True)
    m0 = rand(2, 3, 6, seed=2).requires_grad_(True) if with_state else None
    m, mt = fft.lti_memory(u, ab, bb, initial_state=m0)
    m_ref, mt_ref = naive.lti_memory(u, ab, bb, initial_state=m0)
    w = [rand(2, 3, 6, t, seed=3), rand(2, 3, 6, seed=4)]
    assert_grads_match(w, w, (u,) + ((m0,) if with_state else ()), [m, mt], [m_ref, mt_ref])


# -- long sequences -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_long_sequence_is_finite_at_both_decay_extremes(dtype):
    """T = 65536, B = 1, 2 channels: Re(ΔA) = −30 (every mode gone after one step) and −1e-7 (no decay over the
    whole sequence, with a fast-spinning and a still phase), with an initial state and the final state; the
    Legendre memory and Hyena's filters at the same T."""
    t = 65536
    dtA = torch.tensor([[-30.0 + 0.0j, -30.0 + 3.0j], [-1e-7 + 0.0j, -1e-7 + 2.5j]], dtype=torch.complex64)
    b_bar = torch.ones(2, 2, dtype=torch.complex64)
    c = torch.full((2, 2), 0.5 + 0.1j, dtype=torch.complex64)
    u = torch.randn(1, 2, t, generator=gen(1)) / 100
    x0 = torch.ones(1, 2, 2, dtype=torch.complex64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y, xt = fft.diag_ssm(u.to(dtype), dtA, b_bar, c, initial_state=x0, output_final_state=True)
        assert torch.isfinite(y).all() and torch.isfinite(torch.view_as_real(xt)).all()
        # the non-decaying channel sums every input: its final state is Σ u up to the phase
        torch.testing.assert_close(xt[0, 1, 0].real.float(), u[0, 1].to(dtype).double().sum().float() + 1.0,
                                   rtol=1e-2, atol=1e-2)
        a, b = kernels.legendre_lti(16, 1000.0)
        ab, bb = kernels.zoh(a, b)
        m, mt = fft.lti_memory(u[:, :1].to(dtype), ab.float(), bb.float())
        assert torch.isfinite(m).all() and torch.isfinite(mt).all()
        z, tt = kernels.hyena_positions(t, 3, dtype=torch.float32, device=u.device)
        h = kernels.exp_modulation(tt, z.sum(-1, keepdim=True).expand(t, 4), kernels.hyena_deltas(4, 0.3, 1.5, 1e-2))
        assert torch.isfinite(h).all() and h[-1].abs().max() < 0.1  # the window reached its target
