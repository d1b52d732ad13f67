"""mamba2: heads from headdim (num_heads ignored), the paper's init, decode state shapes and dtypes, left padding,
flops, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lightformer


def build(**options):
    torch.manual_seed(0)
    opts = {"dim": 32, "num_heads": 4, "causal": True, "d_state": 8, "headdim": 16, "chunk_size": 4, **options}
    return lightformer.create_mixer("mamba2", **opts)


def test_heads_come_from_headdim():
    for num_heads in (1, 4, 8):
        m = build(num_heads=num_heads)
        assert m.config.heads == 4 and m.A_log.shape == (4,)  # expand·dim / headdim = 64 / 16
    m = build(ngroups=2)
    assert m.in_proj.weight.shape[0] == 2 * 64 + 2 * 2 * 8 + 4


def test_init_is_mamba2s():
    m = lightformer.create_mixer("mamba2", dim=256, num_heads=4, causal=True)
    a = m.A_log.exp()
    assert m.config.heads == 8 and ((a >= 1) & (a <= 16)).all()
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert (m.D == 1).all() and (m.norm_weight == 1).all()
    assert m.flops(1024) > 0


def test_state_shapes_and_dtypes():
    m = build()
    s = m.init_state(2)
    assert s.conv.shape == (2, 3, 64 + 2 * 8) and s.ssm.shape == (2, 4, 16, 8)
    assert s.conv.dtype == s.ssm.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, s2 = m(torch.randn(2, 9, 32), return_state=True)
        _, s3 = m.step(torch.randn(2, 32), s2)
    assert s2.ssm.dtype == s3.ssm.dtype == torch.float32 and s3.length == 10


def test_left_padding_equals_unpadded():
    m = build().double()
    x = torch.randn(1, 9, 32, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, :3] = False
    y = m(torch.cat([torch.randn(1, 3, 32, dtype=torch.float64) * 7, x], dim=1), key_padding_mask=mask)
    torch.testing.assert_close(y[:, 3:], m(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options,match", [({"headdim": 24}, "headdim"), ({"ngroups": 3}, "ngroups"),
                                           ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
                                           ({"d_state": 0}, "d_state"), ({"causal": False}, "causal")])
def test_config_errors(options, match):
    with pytest.raises(ValueError, match=match):
        build(**options)
