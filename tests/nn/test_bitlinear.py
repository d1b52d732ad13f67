"""BitLinear b1.58 (nn/bitlinear.py): the quantisers on hand-computed examples, the straight-through gradients, the
layer against an oracle written from the papers' equations, and the 2-bit packing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightformer.nn.bitlinear import (EPS, BitLinear, absmax_int8, absmean_ternary, pack_ternary, rms_norm, ste,
                                      ternary_linear, unpack_ternary)


def test_absmean_ternary_of_a_2x3_weight():
    w = torch.tensor([[0.2, -0.05, 0.0], [-0.4, 0.1, 0.3]], dtype=torch.float64)
    ternary, gamma = absmean_ternary(w)
    # γ = (0.2 + 0.05 + 0 + 0.4 + 0.1 + 0.3) / 6 = 0.175; W / (γ + ε) = [1.14, -0.29, 0; -2.29, 0.57, 1.71]
    assert float(gamma) == pytest.approx(0.175, abs=1e-15)
    assert ternary.tolist() == [[1, 0, 0], [-1, 1, 1]]
    assert ternary.dtype == torch.float64


def test_absmax_int8_of_a_token_and_of_a_zero_token():
    x = torch.tensor([[0.5, -2.0, 0.3, 0.01], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    q, scale = absmax_int8(x)
    # s = 127 / 2 = 63.5; x·s = [31.75, -127, 19.05, 0.635]
    assert scale[0, 0].item() == 63.5
    assert q[0].tolist() == [32, -127, 19, 1]
    assert torch.equal(q[0] / scale[0], torch.tensor([32 / 63.5, -2.0, 19 / 63.5, 1 / 63.5], dtype=torch.float64))
    assert q[1].tolist() == [0, 0, 0, 0] and scale[1, 0].item() == pytest.approx(127 / EPS)
    assert q.abs().max() <= 127
    buffer = x.clone()
    q_in_place, scale_in_place = absmax_int8(buffer, inplace=True)
    assert q_in_place.data_ptr() == buffer.data_ptr() and torch.equal(q_in_place, q)
    assert torch.equal(scale_in_place, scale)


def test_rms_norm_by_hand():
    out = rms_norm(torch.tensor([3.0, 4.0], dtype=torch.float64))
    rms = math.sqrt((9 + 16) / 2 + EPS)
    assert out.tolist() == pytest.approx([3 / rms, 4 / rms], abs=1e-15)


def test_ste_has_the_value_of_the_quantiser_and_the_identity_gradient():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    q, scale = absmax_int8(x.detach())
    y = ste(x, q / scale)
    assert torch.equal(y.detach(), q / scale)
    upstream = torch.randn(3, 8, dtype=torch.float64)
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)  # d/dx of x + const is the identity

    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    ternary, gamma = absmean_ternary(w.detach())
    (ste(w, gamma * ternary) * upstream[0, :5]).sum().backward()
    assert torch.equal(w.grad, upstream[0, :5].expand(4, 5))


def oracle(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """BitLinear b1.58 written token by token from the equations (float64, scalar loops for the quantisers)."""
    out_f, in_f = w.shape
    gamma = sum(abs(float(v)) for v in w.flatten()) / (out_f * in_f)
    w_t = torch.tensor([[max(-1.0, min(1.0, round(float(w[o, i]) / (gamma + EPS)))) for i in range(in_f)]
                        for o in range(out_f)], dtype=torch.float64)
    rows = []
    for token in x.reshape(-1, in_f):
        rms = math.sqrt(sum(float(v) ** 2 for v in token) / in_f + EPS)
        normed = [float(v) / rms for v in token]
        s = 127 / max(max(abs(v) for v in normed), EPS)
        x_q = torch.tensor([max(-128.0, min(127.0, round(v * s))) / s for v in normed], dtype=torch.float64)
        y = (gamma * w_t) @ x_q
        rows.append(y if b is None else y + b)
    return torch.stack(rows).reshape(*x.shape[:-1], out_f)


@pytest.mark.parametrize("bias", [False, True])
def test_bitlinear_equals_the_oracle(bias):
    torch.manual_seed(0)
    layer = BitLinear(12, 5, bias=bias, dtype=torch.float64)
    x = torch.randn(2, 3, 12, dtype=torch.float64)
    x[1, 2] = 0.0  # a token of zeros quantises to zeros
    expected = oracle(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)  # the straight-through form
    layer.eval()
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)  # no train/eval difference
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)  # the integer form


def test_the_integer_form_equals_the_straight_through_form_in_float32():
    torch.manual_seed(3)
    layer = BitLinear(96, 40, bias=True)
    x = torch.randn(4, 7, 96)
    with torch.no_grad():
        integer = layer(x)
    torch.testing.assert_close(integer, layer(x).detach(), rtol=1e-6, atol=1e-6)
    ternary, gamma = absmean_ternary(layer.weight.detach())
    assert torch.equal(integer, ternary_linear(x, ternary, gamma, layer.bias))
    q, scale = absmax_int8(rms_norm(x))
    sums = q.double() @ ternary.double().T  # exact: integers
    assert torch.equal(q @ ternary.T, sums.float())


def test_bitlinear_gradients_are_straight_through():
    """dL/dW = gᵀ x_q (the gradient of the ternary weight, given to the latent one); dL/dx flows through the norm as
    if the activations were not quantised: the gradient of rms_norm(x) @ (γ W̃)ᵀ."""
    torch.manual_seed(1)
    layer = BitLinear(16, 6, bias=True, dtype=torch.float64)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, dtype=torch.float64)
    layer(x).backward(g)

    q, scale = absmax_int8(rms_norm(x.detach()))
    torch.testing.assert_close(layer.weight.grad, g.T @ (q / scale), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, g.sum(0), rtol=1e-12, atol=1e-12)
    ternary, gamma = absmean_ternary(layer.weight.detach())
    x2 = x.detach().clone().requires_grad_(True)
    F.linear(rms_norm(x2), gamma * ternary).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_from_linear_shares_the_parameters():
    linear = nn.Linear(4, 3)
    bit = BitLinear.from_linear(linear)
    assert isinstance(bit, nn.Linear) and bit.weight is linear.weight and bit.bias is linear.bias
    assert list(bit.state_dict()) == ["weight", "bias"]  # the state dict of an nn.Linear: no extra parameters
    assert BitLinear.from_linear(nn.Linear(4, 3, bias=False)).bias is None


def test_bitlinear_under_bf16_autocast_is_finite_and_close():
    torch.manual_seed(2)
    layer = BitLinear(32, 16)
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.02)


def test_pack_by_hand():
    # codes t + 1: [0, 1, 2, 2] -> 0 | 1<<2 | 2<<4 | 2<<6 = 164; [2] padded with code 1 -> 2 | 4 | 16 | 64 = 86
    assert pack_ternary(torch.tensor([-1, 0, 1, 1])).tolist() == [164]
    assert pack_ternary(torch.tensor([1])).tolist() == [86]
    assert pack_ternary(torch.tensor([[-1, 0, 1, 1], [1, 0, 0, 0]])).tolist() == [164, 86]
    assert pack_ternary(torch.tensor([1.0, -1.0])).dtype == torch.uint8  # float ternary values are accepted


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 1001])
def test_pack_unpack_round_trip_every_value_and_length(n):
    values = torch.tensor([-1, 0, 1], dtype=torch.int8).repeat(n)[:n]  # every value once n >= 3
    values = values[torch.randperm(n, generator=torch.Generator().manual_seed(n))]
    packed = pack_ternary(values)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(n / 4),)
    assert torch.equal(unpack_ternary(packed, n), values)


def test_unpack_every_byte():
    values = unpack_ternary(torch.arange(256, dtype=torch.uint8), 1024).view(256, 4)
    for byte in (0, 1, 85, 164, 170, 255):
        assert values[byte].tolist() == [((byte >> (2 * j)) & 3) - 1 for j in range(4)]
    valid = [b for b in range(256) if all((b >> (2 * j)) & 3 != 3 for j in range(4))]
    assert len(valid) == 81  # 3^4 bytes are reachable from ternary values
    assert torch.equal(pack_ternary(values[valid]), torch.tensor(valid, dtype=torch.uint8))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="only -1, 0 and 1; 2 of 4"):
        pack_ternary(torch.tensor([2, 0, 1, -3]))
    with pytest.raises(ValueError, match="ternary must not be empty"):
        pack_ternary(torch.tensor([]))
    with pytest.raises(ValueError, match="packed must be a 1-D uint8"):
        unpack_ternary(torch.tensor([1, 2], dtype=torch.int8), 8)
    with pytest.raises(ValueError, match="numel=9 does not fit 2 packed bytes"):
        unpack_ternary(torch.tensor([1, 2], dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="numel=4 does not fit 2 packed bytes"):
        unpack_ternary(torch.tensor([1, 2], dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="w must be a non-empty float tensor"):
        absmean_ternary(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="x must be a float tensor"):
        absmax_int8(torch.tensor(1.0))
    with pytest.raises(ValueError, match="x must be \\[..., in_features=4\\], got shape \\(2, 5\\)"):
        BitLinear(4, 3)(torch.randn(2, 5))
