"""gla specifics (named _layer: tests/ops/test_gla.py holds the basename): the gate α = σ(·)^{1/16} of the
reference layer, the reference sizes, states that stay float32 under bf16 autocast, and FLOPs linear in T."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lightformer


def test_gate_and_sizes():
    m = lightformer.create_mixer("gla", dim=64, num_heads=4, causal=True)
    assert (m.head_k_dim, m.head_v_dim) == (8, 16)  # expand_k = 0.5, expand_v = 1
    with torch.no_grad():
        m.gk_proj[1].weight.zero_()
        m.gk_proj[1].bias.fill_(2.0)
        _, _, _, g = m._project(torch.randn(1, 3, 64), None)
    torch.testing.assert_close(g, torch.full_like(g, F.logsigmoid(torch.tensor(2.0)).item() / 16))


@pytest.mark.parametrize("name", ["gla", "rwkv6"])
def test_state_stays_float32_under_bf16_autocast(name):
    m = lightformer.create_mixer(name, dim=32, num_heads=4, causal=True, chunk_size=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = m(torch.randn(2, 9, 32), return_state=True)
        _, state = m.step(torch.randn(2, 32), state)
    assert all(t.dtype == torch.float32 for t in state.tensors())


@pytest.mark.parametrize("name", ["gla", "rwkv6"])
def test_flops_linear_in_length(name):
    m = lightformer.create_mixer(name, dim=512, num_heads=4, causal=True)
    assert m.flops(8192) == pytest.approx(2 * m.flops(4096))
    assert m.flops(1024, batch=3) == pytest.approx(3 * m.flops(1024))
    # the projections dominate at D = 512: between 2 and 3 multiply-adds per weight and token... per token
    per_token = m.flops(4096) / 4096
    assert 2e6 < per_token < 3e6, per_token
    assert math.isfinite(per_token)
