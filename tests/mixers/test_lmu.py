"""lmu: the Legendre system is fixed (no trained A, B), its impulse response is cached and reused, the decoding state
is [B, memory_d, order], config errors name the option."""

from __future__ import annotations

import pytest
import torch

import lightformer
from lightformer.ops.longconv import kernels


def build(**options):
    torch.manual_seed(0)
    return lightformer.create_mixer("lmu", dim=16, num_heads=1, causal=True, **options)


def test_only_the_projections_are_trained():
    m = build(order=8, theta=10.0, memory_d=3)
    assert {n for n, _ in m.named_parameters()} == {"W_u.weight", "W_u.bias", "W_h.weight", "W_h.bias"}
    assert m.W_h.in_features == 3 * 8 + 16
    ab, bb = m.lti(torch.device("cpu"), torch.float64)
    a, b = kernels.legendre_lti(8, 10.0)
    torch.testing.assert_close(ab, torch.linalg.matrix_exp(a))
    torch.testing.assert_close(bb, torch.linalg.solve(a, (ab - torch.eye(8, dtype=a.dtype)) @ b))


def test_impulse_is_cached_and_sliced():
    m = build(order=8)
    h = m.impulse(100, torch.device("cpu"), torch.float32)
    assert h.shape == (8, 100) and h.dtype == torch.float32
    h2 = m.impulse(40, torch.device("cpu"), torch.float32)
    assert h2.data_ptr() == h.data_ptr()  # a shorter T reuses the cached response
    torch.testing.assert_close(h2, h[:, :40])


def test_state_shape_and_size():
    m = build(order=8, memory_d=3)
    _, s = m(torch.randn(2, 5, 16), return_state=True)
    assert s.m.shape == (2, 3, 8) and s.m.dtype == torch.float32 and s.nbytes() == 2 * 3 * 8 * 4


@pytest.mark.parametrize("option,value", [("order", 0), ("theta", 0.0), ("memory_d", 0)])
def test_bad_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option):
        build(**{option: value})
