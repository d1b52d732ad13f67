"""retnet: the three forms of retention are one function (chunkwise forward = parallel oracle = recurrent steps, on
outputs and gradients, float64), the paper's decays, the relative rotation, the value width, config errors."""

from __future__ import annotations

import math

import pytest
import torch

import lightformer
from lightformer.mixers.retnet import retention_log_decays


def build(**options):
    torch.manual_seed(0)
    opts = {"dim": 32, "num_heads": 4, "causal": True, "chunk_size": 4, **options}
    return lightformer.create_mixer("retnet", **opts).double()


def test_parallel_recurrent_chunkwise_agree():
    m = build()
    x = torch.randn(2, 19, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xs = [x.clone().requires_grad_(True) for _ in range(3)]
    chunkwise = m(xs[0])
    parallel = m.oracle(xs[1])
    state, steps = m.init_state(2, dtype=torch.float64), []
    for i in range(19):
        y, state = m.step(xs[2][:, i], state)
        steps.append(y)
    recurrent = torch.stack(steps, dim=1)
    for other in (parallel, recurrent):
        torch.testing.assert_close(chunkwise, other, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(chunkwise)
    grads = [torch.autograd.grad(y, [xi, m.in_proj.weight], g) for y, xi in zip((chunkwise, parallel, recurrent), xs)]
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_decays_are_the_papers():
    gamma = retention_log_decays(4, dtype=torch.float64).exp()
    torch.testing.assert_close(gamma, torch.tensor([1 - 2.0 ** (-5 - h) for h in range(4)], dtype=torch.float64))


def test_rotation_is_relative():
    """(R_n q)·(R_m k) depends on n − m only (the rotation of theta_shift)."""
    m = build()
    q, k = torch.randn(2, 1, 1, 8, dtype=torch.float64).unbind(0)
    def dot(n, mm):
        return (m._rotate(q, torch.tensor([n])) * m._rotate(k, torch.tensor([mm]))).sum()
    torch.testing.assert_close(dot(5, 2), dot(103, 100))
    assert not torch.allclose(dot(5, 2), dot(5, 3))
    assert m.theta[0].item() == 1.0 and math.isclose(m.theta[-1].item(), 1e-4, rel_tol=1e-5)


def test_value_width_and_state():
    m = build()
    assert m.in_proj.weight.shape == (2 * 32 + 2 * 64, 32) and m.out_proj.weight.shape == (32, 64)
    assert build(value_dim=32).out_proj.weight.shape == (32, 32)
    s = m.init_state(3)
    assert s.s.shape == (3, 4, 8, 16) and s.s.dtype == torch.float32
    assert m.flops(128) > 0


def test_left_padding_equals_unpadded():
    m = build()
    x = torch.randn(1, 9, 32, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, :3] = False
    y = m(torch.cat([torch.randn(1, 3, 32, dtype=torch.float64) * 5, x], dim=1), key_padding_mask=mask)
    # positions count the padded tokens: compare with the same sequence rotated by 3 positions (prefill of 3 zeros)
    assert torch.isfinite(y).all()
    _, state = m(torch.zeros(1, 3, 32, dtype=torch.float64), return_state=True)
    state = type(state)(length=3, s=torch.zeros_like(state.s))
    ref, _ = m(x, state=state, return_state=True)
    torch.testing.assert_close(y[:, 3:], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options,match", [({"value_dim": 30}, "value_dim"), ({"chunk_size": 0}, "chunk_size"),
                                           ({"norm_eps": 0.0}, "norm_eps"), ({"num_heads": 32}, "even"),
                                           ({"causal": False}, "causal")])
def test_config_errors(options, match):
    with pytest.raises(ValueError, match=match):
        build(**options)
