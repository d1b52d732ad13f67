"""The registry-wide mixer contract (DESIGN.md): every registered mixer is checked here by being registered.

For each mixer and each direction it supports (causal / bidirectional): shape and dtype kept, finite outputs,
a gradient on every parameter, forward equals its naive oracle (outputs and gradients, float64), causality,
padding, decode equals the parallel forward, batch independence, seeded determinism, bf16 autocast, and errors
that name the bad argument. A mixer that accepts ``position="t5"`` runs all of it a second time with T5's learned
relative bias (the one position scheme with parameters of its own, so it changes the mixer's parameters, oracle,
decode path and gradients); its table is drawn at random, since the zero init would make the bias vacuous.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightformer
from lightformer import MIXERS

DIM, HEADS = 32, 4
LENGTHS = (1, 7, 33)


def cases():
    for name in MIXERS.names():
        caps = MIXERS.get(name).capabilities
        for causal in (False, True):
            if (causal and caps.causal) or (not causal and caps.non_causal):
                case = f"{name}-{'causal' if causal else 'bidir'}"
                yield pytest.param(name, causal, "none", id=case)
                if "t5" in caps.positions:
                    yield pytest.param(name, causal, "t5", id=f"{case}-t5")


CASES = list(cases())
# T5 options that reach the far, log-spaced buckets at the contract's lengths (T <= 33)
T5_OPTIONS = {"t5_num_buckets": 16, "t5_max_distance": 12}


def build(name: str, causal: bool, position: str = "none", seed: int = 0, **extra) -> lightformer.Mixer:
    torch.manual_seed(seed)
    options = {**MIXERS.get(name).example_options, **(T5_OPTIONS if position == "t5" else {}), **extra}
    m = lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, position=position, **options)
    if position == "t5":
        nn.init.normal_(m.rel_bias, std=1.0)  # still seeded by `seed`
    return m.eval()


def inputs(b: int, t: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, DIM, generator=g, dtype=torch.float64).to(dtype)


def lengths_for(mixer) -> list[int]:
    limit = mixer.max_len
    return [t for t in LENGTHS if limit is None or t <= limit]


def assert_close(a, b, tol):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,causal,position", CASES)
def test_shape_dtype_finite(name, causal, position):
    m = build(name, causal, position)
    for t in lengths_for(m):
        for dtype in (torch.float32, torch.float64):
            x = inputs(2, t, dtype)
            y = m.to(dtype)(x)
            assert y.shape == x.shape and y.dtype == dtype
            assert torch.isfinite(y).all(), f"T={t} {dtype}"


@pytest.mark.parametrize("name,causal,position", CASES)
def test_every_parameter_gets_a_gradient(name, causal, position):
    m = build(name, causal, position).train()
    t = lengths_for(m)[-1]
    x = inputs(2, t).requires_grad_(True)  # so that a parameter-free mixer (fnet, poolformer) has a graph too
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, "the input got no gradient"
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name,causal,position", CASES)
def test_forward_equals_oracle(name, causal, position):
    m = build(name, causal, position).double()
    for t in lengths_for(m):
        x = inputs(2, t, torch.float64).requires_grad_(True)
        y = m(x)
        x_ref = x.detach().clone().requires_grad_(True)
        y_ref = m.oracle(x_ref)
        assert_close(y, y_ref, 1e-9)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, [x, *m.parameters()], g)
        grads_ref = torch.autograd.grad(y_ref, [x_ref, *m.parameters()], g)
        for (pname, _), a, b in zip([("x", None), *m.named_parameters()], grads, grads_ref):
            assert_close(a, b, 1e-8)


@pytest.mark.parametrize("name,causal,position", CASES)
def test_causality(name, causal, position):
    if not causal:
        pytest.skip("bidirectional configuration: causality does not apply")
    m = build(name, causal, position)
    t = lengths_for(m)[-1]
    x = inputs(2, t)
    y = m(x)
    cut = t // 2
    x2 = x.clone()
    x2[:, cut:] = torch.randn_like(x2[:, cut:]) * 3
    y2 = m(x2)
    assert_close(y2[:, :cut], y[:, :cut], 1e-5)
    assert not torch.allclose(y2[:, cut:], y[:, cut:]), "future tokens changed nothing at all: mixer is inert"


@pytest.mark.parametrize("name,causal,position", CASES)
def test_padding(name, causal, position):
    m = build(name, causal, position)
    if not m.capabilities.padding_mask:
        with pytest.raises(ValueError, match="key_padding_mask"):
            m(inputs(1, 4), key_padding_mask=torch.ones(1, 4, dtype=torch.bool))
        return
    t = lengths_for(m)[-1]
    real = [t, max(1, t // 2), max(1, t - 3)]
    x = inputs(len(real), t)
    mask = torch.zeros(len(real), t, dtype=torch.bool)
    for i, n in enumerate(real):
        mask[i, :n] = True
    x_garbage = x.masked_fill(~mask[..., None], 0.0) + (~mask[..., None]) * 7.0 * torch.randn_like(x)
    y = m(x_garbage, key_padding_mask=mask)
    assert torch.isfinite(y).all(), "non-finite outputs (padded positions must stay finite too)"
    for i, n in enumerate(real):
        alone = m(x[i:i + 1, :n])
        assert_close(y[i:i + 1, :n], alone, 1e-5)


@pytest.mark.parametrize("name,causal,position", CASES)
def test_decode_equals_forward(name, causal, position):
    m = build(name, causal, position)
    if not (causal and m.capabilities.decode):
        pytest.skip("decode applies to causal mixers with capabilities.decode")
    t = lengths_for(m)[-1]
    x = inputs(2, t)
    y = m(x)
    state = m.init_state(2, device="cpu", dtype=torch.float32)
    steps = []
    with torch.no_grad():
        for i in range(t):
            y_t, state = m.step(x[:, i], state)
            steps.append(y_t)
    assert_close(torch.stack(steps, dim=1), y, 1e-5)


@pytest.mark.parametrize("name,causal,position", CASES)
def test_batch_independence(name, causal, position):
    m = build(name, causal, position)
    t = lengths_for(m)[-1]
    x = inputs(3, t)
    y = m(x)
    for i in range(3):
        assert_close(m(x[i:i + 1]), y[i:i + 1], 1e-5)


@pytest.mark.parametrize("name,causal,position", CASES)
def test_seeded_determinism(name, causal, position):
    a, b = build(name, causal, position, seed=5), build(name, causal, position, seed=5)
    t = lengths_for(a)[-1]
    x = inputs(2, t)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,causal,position", CASES)
def test_bf16_autocast(name, causal, position):
    m = build(name, causal, position)
    t = lengths_for(m)[-1]
    x = inputs(2, t)
    y = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = m(x)
    assert torch.isfinite(y16).all()
    rel = (y16.float() - y).norm() / y.norm()
    assert rel < 0.05, f"bf16 autocast relative error {rel:.3g}"


@pytest.mark.parametrize("name,causal,position", CASES)
def test_bad_inputs_name_the_argument(name, causal, position):
    m = build(name, causal, position)
    with pytest.raises(ValueError, match="rank"):
        m(torch.randn(4, DIM))
    with pytest.raises(ValueError, match="dim"):
        m(torch.randn(1, 4, DIM + 1))
    if m.capabilities.padding_mask:
        with pytest.raises(ValueError, match="key_padding_mask"):
            m(torch.randn(1, 4, DIM), key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="key_padding_mask"):
            m(torch.randn(1, 4, DIM), key_padding_mask=torch.ones(1, 4))
    if m.max_len is not None:
        with pytest.raises(ValueError, match="max_len"):
            m(torch.randn(1, m.max_len + 1, DIM))


def test_unknown_mixer_and_option():
    with pytest.raises(ValueError, match="unknown mixer 'nope'.*softmax"):
        lightformer.create_mixer("nope", dim=DIM, num_heads=HEADS)
    with pytest.raises(TypeError, match="'windw'.*valid options: .*num_kv_heads"):
        lightformer.create_mixer("softmax", dim=DIM, num_heads=HEADS, windw=3)


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        MIXERS.register("softmax")(type(MIXERS.get("softmax")).__class__)  # any class: the name is taken first


def test_list_mixers_pattern():
    assert "softmax" in lightformer.list_mixers()
    assert lightformer.list_mixers("soft*") == [n for n in lightformer.list_mixers() if n.startswith("soft")]
