"""``performer``: options, feature redrawing, saved features, grouped KV heads, and FAVOR+ against softmax through
the same (shared-name) parameters."""

from __future__ import annotations

import pytest
import torch

import lightformer

DIM, HEADS = 32, 4


def make(**options):
    torch.manual_seed(0)
    return lightformer.create_mixer("performer", dim=DIM, num_heads=HEADS, **options).eval()


@pytest.mark.parametrize("option,value", [("num_features", 0), ("redraw", "yes"), ("chunk_size", 0), ("eps", 0.0)])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        make(**{option: value})


def test_redraw_only_in_training_mode():
    m = make(num_features=16, redraw=True)
    x = torch.randn(2, 9, DIM)
    w0 = m.projection.clone()
    m(x)
    assert torch.equal(m.projection, w0), "eval-mode forward must not redraw"
    m.train()(x)
    w1 = m.projection.clone()
    assert not torch.equal(w1, w0), "train-mode forward with redraw=True must redraw"
    m.redraw_features()
    assert not torch.equal(m.projection, w1)
    fixed = make(num_features=16).train()
    w = fixed.projection.clone()
    fixed(x)
    assert torch.equal(fixed.projection, w), "redraw=False never redraws"


def test_features_travel_with_the_state_dict():
    a = make(num_features=16)
    torch.manual_seed(123)
    b = lightformer.create_mixer("performer", dim=DIM, num_heads=HEADS, num_features=16).eval()
    x = torch.randn(2, 7, DIM)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_kv_heads(causal):
    m = make(num_features=16, chunk_size=4, num_kv_heads=2, causal=causal).double()
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), m.oracle(x), rtol=1e-10, atol=1e-10)
    if causal:
        state = m.init_state(2, dtype=torch.float64)
        steps = []
        for i in range(11):
            y, state = m.step(x[:, i], state)
            steps.append(y)
        torch.testing.assert_close(torch.stack(steps, 1), m(x), rtol=1e-10, atol=1e-10)


def test_large_inputs_stay_finite():
    """The stabilisers (per-query normalisation, fixed key shift) keep outputs finite for large activations."""
    for causal in (False, True):
        m = make(num_features=64, causal=causal, chunk_size=8)
        x = 30 * torch.randn(2, 40, DIM)
        x.requires_grad_(True)
        y = m(x)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_approximates_softmax_with_the_same_weights():
    """Performer's parameters have softmax's names, so one state dict drives both. On low-norm inputs with many
    features the outputs agree within the Lemma-2 budget (Choromanski et al. 2021; see tests/ops/test_kernel.py):
    |q'|, |k'| <= 0.5 gives a per-kernel relative std <= sqrt((e − 1)/m) = 2.9% at m = 2048; measured 0.4%."""
    perf = make(num_features=2048)
    soft = lightformer.create_mixer("softmax", dim=DIM, num_heads=HEADS).eval()
    soft.load_state_dict({k: v for k, v in perf.state_dict().items() if k != "projection"})
    with torch.no_grad():
        perf.qkv.weight.mul_(0.2)  # small q, k (and v; the ratio is scale-free in v)
        soft.qkv.weight.copy_(perf.qkv.weight)
    x = torch.randn(2, 24, DIM)
    q = perf.qkv(x)[..., :DIM].reshape(2, 24, HEADS, -1)
    assert (q.norm(dim=-1) * (DIM // HEADS) ** -0.25).max() < 0.5
    ref = soft(x)
    rel = ((perf(x) - ref).norm() / ref.norm()).item()
    assert rel < 0.029, f"relative error {rel:.3g}"
