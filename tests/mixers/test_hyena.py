"""hyena: the filters are generated for the actual T (any T, no max_len), the window reaches its target where the
config says, no decode and no padding (both refused, as the capabilities say), config errors."""

from __future__ import annotations

import math

import pytest
import torch

import lightformer


def build(**options):
    torch.manual_seed(0)
    return lightformer.create_mixer("hyena", dim=16, num_heads=1, causal=True, **options)


def test_filters_follow_t():
    m = build(filter_order=8)
    assert m.max_len is None
    k50, k100 = m.filters(50, torch.float32, torch.device("cpu")), m.filters(100, torch.float32, torch.device("cpu"))
    assert k50.shape == (16, 50) and k100.shape == (16, 100)
    assert not torch.allclose(k50, k100[:, :50])  # positions are normalised by T
    for t in (1, 50, 300):
        assert torch.isfinite(m(torch.randn(1, t, 16))).all()


def test_window_reaches_target():
    m = build(fast_decay_pct=0.25, slow_decay_pct=1.0, target=1e-2)
    d = m.deltas.abs()
    torch.testing.assert_close(torch.exp(-0.25 * d[-1]), torch.tensor(1e-2))  # fastest channel at 25 %
    torch.testing.assert_close(torch.exp(-1.0 * d[0]), torch.tensor(1e-2))  # slowest at the end
    assert math.isclose(m.implicit_filter[1].freq[0].item(), 1.0)


def test_order_three_has_two_long_convolutions():
    m = build(order=3, filter_order=8)
    assert m.in_proj.out_features == 4 * 16 and m.filter_bias.shape == (2 * 16,)
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(m.double()(x), m.oracle(x), rtol=1e-9, atol=1e-9)


def test_no_decode_and_no_padding():
    m = build()
    assert not m.capabilities.decode and not m.capabilities.padding_mask
    with pytest.raises(NotImplementedError, match="decode"):
        m.init_state(1)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(torch.randn(1, 4, 16), key_padding_mask=torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.parametrize("option,value", [("order", 1), ("emb_dim", 4), ("w", 0.0), ("target", 1.0),
                                          ("fast_decay_pct", 2.0), ("filter_order", 0)])
def test_bad_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option):
        build(**{option: value})
