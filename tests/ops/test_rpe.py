"""Kernelized attention with RPE (Luo et al. 2021): the FFT fast path (``ops/rpe/fft.py``) and the dense one for
short sequences (``ops/rpe/dense.py``) against the dense Toeplitz oracle (``ops/rpe/naive.py``), outputs and
gradients (features, values and position weights), float32/bf16, odd lengths, feature chunks smaller than m, causal
and padded; the mixer's choice between the two; and the error budget against exact softmax attention with the RPE
bias log b."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.ops.kernel.features import favor_key_shift, favor_plus, orthogonal_gaussian
from lightformer.mixers import MIXERS
from lightformer.mixers import kernel_rpe_fft as mixer_mod
from lightformer.ops.rpe import dense, fft, naive

B, H, M, D = 2, 2, 6, 4
LENGTHS = (1, 7, 63, 257)


def make(t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    phi_q = torch.rand(B, H, t, M, generator=g, dtype=torch.float64)
    phi_k = torch.rand(B, H, t, M, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, t, D, generator=g, dtype=torch.float64)
    b_rel = torch.exp(0.5 * torch.randn(H, 2 * t - 1, generator=g, dtype=torch.float64))
    mask = torch.ones(B, t, dtype=torch.bool)
    mask[1, t // 2 + 1:] = False
    return phi_q, phi_k, v, b_rel, mask


def run(fn, tensors, grad_out, **kw):
    leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
    y = fn(*leaves, **kw)
    return [y] + list(torch.autograd.grad(y, leaves, grad_out.to(y.dtype)))


def fast_path(name: str):
    """The op under test: the FFT form in feature chunks smaller than m, or the dense form."""
    if name == "fft":
        return lambda *xs, **kw: fft.kernel_rpe_attention(*xs, feature_chunk=4, **kw)
    return dense.kernel_rpe_attention


@pytest.mark.parametrize("path", ["fft", "dense"])
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("causal", [False, True])
def test_fast_paths_match_oracle_float64(path, t, causal):
    *xs, mask = make(t)
    g = torch.randn(B, H, t, D, dtype=torch.float64)
    for km in (None, mask):
        for a, b in zip(run(fast_path(path), xs, g, causal=causal, key_padding_mask=km),
                        run(naive.kernel_rpe_attention, xs, g, causal=causal, key_padding_mask=km)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_mixer_runs_dense_up_to_dense_max_len_and_fft_beyond(monkeypatch):
    """Both forms inside the mixer equal its oracle, and the mixer calls the one its length selects."""
    torch.manual_seed(0)
    mixer = MIXERS.create("kernel_rpe_fft", dim=16, num_heads=2, causal=True, max_len=40, num_features=8).double()
    with torch.no_grad():
        mixer.rpe_logits.normal_(0.0, 0.5)
    x = torch.randn(2, 33, 16, dtype=torch.float64)
    calls = []
    for name in ("dense", "fft"):
        module = getattr(mixer_mod, name)
        op = module.kernel_rpe_attention
        monkeypatch.setattr(module, "kernel_rpe_attention", lambda *a, _op=op, _n=name, **k: calls.append(_n) or
                            _op(*a, **k))
    for limit, expect in ((33, "dense"), (32, "fft")):
        monkeypatch.setattr(mixer_mod, "DENSE_MAX_LEN", limit)
        calls.clear()
        torch.testing.assert_close(mixer(x), mixer.oracle(x), rtol=1e-9, atol=1e-11)
        assert calls == [expect]


@pytest.mark.parametrize("path", ["fft", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_error_within_twice_naive(path, dtype, causal):
    t = 257
    *xs, mask = make(t, seed=1)
    g = torch.randn(B, H, t, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = run(naive.kernel_rpe_attention, xs, g, causal=causal, key_padding_mask=mask)
    low = [x.to(dtype) for x in xs]
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    fast = run(fast_path(path), low, g, causal=causal, key_padding_mask=mask)
    ref = run(naive.kernel_rpe_attention, low, g, causal=causal, key_padding_mask=mask)
    for a, n, e in zip(fast, ref, exact):
        err_fast, err_naive = (a.double() - e).abs().max().item(), (n.double() - e).abs().max().item()
        assert err_fast <= 2 * err_naive + floor * e.abs().max().item(), (err_fast, err_naive)


def test_error_budget_against_softmax_with_rpe_bias():
    """With many positive random features on low-norm inputs, z equals softmax(QKᵀ/sqrt(d) + log b) V up to the
    FAVOR+ estimation error: FAVOR+ is unbiased with relative variance ~ (e^{|x+y|²} − 1)/m for exp(xᵀy)
    (Choromanski et al. 2021, "Rethinking Attention with Performers", Lemma 1-2), and the RPE weights b > 0 only
    re-weight the same positive estimates (Luo et al. 2021, Sec. 3.3). On low-norm inputs (q, k with N(0, 0.3²)
    coordinates, d = 16) and m = 4096 features the budget is 3% of max |V| (max abs error)."""
    t, d, m = 64, 16, 4096
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 1, t, d, generator=g, dtype=torch.float64) for _ in range(3))
    q, k = 0.3 * q, 0.3 * k
    b_rel = torch.exp(0.5 * torch.randn(1, 2 * t - 1, generator=g, dtype=torch.float64))
    w = orthogonal_gaussian(m, d, g).double()
    scale = d ** -0.25
    phi_q = favor_plus(q * scale, w, is_query=True)
    phi_k = favor_plus(k * scale, w, is_query=False, key_shift=favor_key_shift(w))
    for causal in (False, True):
        z = fft.kernel_rpe_attention(phi_q, phi_k, v, b_rel, causal=causal)
        i = torch.arange(t)
        bias = torch.log(b_rel[0, (i[:, None] - i[None, :] + t - 1)])
        if causal:
            bias = bias.masked_fill(i[None, :] > i[:, None], float("-inf"))
        exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1) @ v
        assert (z - exact).abs().max() < 0.03 * v.abs().max(), (z - exact).abs().max()


def test_circular_weights_place_each_offset_at_its_index_mod_n():
    t, n = 4, 9  # 2T − 1 = 7 <= n: two zero columns between the positive and the negative offsets
    b_rel = torch.arange(1.0, 2 * t).reshape(1, -1)  # offset δ at column δ + T − 1 holds δ + T
    w = fft.circular_weights(b_rel, t, causal=False, n=n)
    assert w.tolist() == [[4.0, 5.0, 6.0, 7.0, 0.0, 0.0, 1.0, 2.0, 3.0]]
    assert fft.circular_weights(b_rel, t, causal=True, n=n).tolist() == [[4.0, 5.0, 6.0, 7.0] + [0.0] * 5]
    assert fft.circular_weights(b_rel, t, causal=False).shape == (1, 2 * t)
    with pytest.raises(ValueError, match="n must be >= 2T - 1 = 7"):
        fft.circular_weights(b_rel, t, causal=False, n=6)
