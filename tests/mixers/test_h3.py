"""h3: head_dim from num_heads (1 = the reference, 2 = Zoology) against the oracle and through decode, the state
shapes, and the shift SSM as an N-tap causal filter."""

from __future__ import annotations

import pytest
import torch

import lightformer
from lightformer.ops.longconv import fft


def build(heads: int, **options):
    torch.manual_seed(0)
    return lightformer.create_mixer("h3", dim=8, num_heads=heads, causal=True, d_state=4, **options).double()


@pytest.mark.parametrize("heads", [8, 4], ids=["head_dim1", "head_dim2"])
def test_forward_oracle_and_decode(heads):
    m = build(heads)
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, m.oracle(x), rtol=1e-10, atol=1e-10)
    _, state = m(x[:, :6], return_state=True)
    d = 8 // heads
    assert state.window.shape == (2, 3, 8) and state.x.shape == (2, d, d, heads, 2)
    ys = []
    for t in range(6, 11):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y[:, 6:], rtol=1e-10, atol=1e-10)


def test_shift_ssm_is_an_n_tap_filter():
    """A key at t = 0 reaches k̃ at t = 0 .. N−1 only: with v = 1 and the diagonal SSM replaced by its D skip
    (C = 0, D = 1) and q = 1, the output sees the key for exactly N = 4 steps."""
    m = build(8)
    with torch.no_grad():
        m.ssm.C.zero_()
        m.D.fill_(1.0)
        m.ssm_k_D.zero_()
    k = torch.zeros(1, 8, 10, dtype=torch.float64)
    k[..., 0] = 1.0
    shifted = fft.causal_conv(k, m.shift_kernel)
    assert torch.all(shifted[..., 4:].abs() < 1e-12) and torch.all(shifted[..., :4] != 0)
    torch.testing.assert_close(shifted[0, :, :4], m.shift_kernel)
