"""``linear_relu`` (SLAB, Guo et al. 2024): options, the convolution with bias, decoding state, zero feature rows."""

from __future__ import annotations

import pytest
import torch

import lightformer

DIM, HEADS = 32, 4


def make(**options):
    torch.manual_seed(0)
    return lightformer.create_mixer("linear_relu", dim=DIM, num_heads=HEADS, **options).eval()


@pytest.mark.parametrize("option,value", [("conv_kernel", 0), ("conv_kernel", True), ("chunk_size", 0)])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        make(**{option: value})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_bias_and_kernel_sizes(causal, kernel):
    m = make(causal=causal, bias=True, conv_kernel=kernel, chunk_size=4).double()
    assert m.conv_bias is not None
    x = torch.randn(2, 15, DIM, dtype=torch.float64, requires_grad=True)
    y, ref = m(x), m.oracle(x)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, *m.parameters()], g), torch.autograd.grad(ref, [x, *m.parameters()], g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    if causal:
        state = m.init_state(2, dtype=torch.float64)
        assert state.conv.shape == (2, kernel - 1, DIM)
        steps = []
        with torch.no_grad():
            for i in range(15):
                y_t, state = m.step(x[:, i].detach(), state)
                steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), y.detach(), rtol=1e-10, atol=1e-10)


def test_padding_does_not_leak_through_the_convolution():
    """Non-causal: the last real token's convolution window covers padded positions; their garbage is zeroed."""
    m = make(conv_kernel=5)
    x = torch.randn(1, 10, DIM)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 6:] = False
    garbage = x.clone()
    garbage[0, 6:] = 100.0
    torch.testing.assert_close(m(garbage, key_padding_mask=mask)[:, :6], m(x[:, :6]), rtol=1e-5, atol=1e-5)


def test_all_zero_features_leave_the_convolution():
    """With every query feature zero, the attention term is exactly 0 (eps) and the output is DWC(V) alone."""
    m = make(causal=True)
    with torch.no_grad():
        q_rows = slice(0, DIM)
        m.qkv.weight[q_rows] = 0.0  # q = 0 -> ReLU(q) = 0 for every token
    x = torch.randn(2, 9, DIM)
    y = m(x)
    assert torch.isfinite(y).all()
    _, _, v = m._qkv(x, torch.arange(9))
    conv_only = m.out(m.mix_values(torch.zeros_like(v), v, None, naive_ops=True).transpose(1, 2).reshape(2, 9, DIM))
    torch.testing.assert_close(y, conv_only, rtol=1e-5, atol=1e-6)
