"""deltanet / gated_deltanet beyond the registry-wide contract: Mamba-2's init of A_log and dt_bias (and that the
model keeps it), left padding equals the unpadded run (padded tokens write nothing and are zero for the
convolutions), the state is float32 under bf16 autocast, the decay lies in (0, 1], sizes and FLOPs, option
checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lightformer
from lightformer import LanguageModel, ModelConfig
from lightformer.mixers.deltanet import DeltaNetState

NAMES = ["deltanet", "gated_deltanet"]


def build(name: str, **options) -> lightformer.Mixer:
    torch.manual_seed(0)
    return lightformer.create_mixer(name, dim=32, num_heads=4, causal=True, **{"chunk_size": 4, **options}).eval()


def test_gated_init_is_mamba2s_and_survives_the_model():
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=2, num_heads=4, mixer="gated_deltanet",
                                   max_len=16, position="learned"))
    for block in lm.backbone.blocks:
        m = block.mixer
        a = m.A_log.exp()
        assert torch.all((a > 0) & (a <= 16))
        dt = F.softplus(m.dt_bias)
        assert torch.all((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5)))
        assert not torch.all(m.dt_bias == 0)  # the generic init did not overwrite it
        # the output projection is the residual one: std 0.02 / sqrt(2 * 2)
        assert m.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.15)


@pytest.mark.parametrize("name", NAMES)
def test_left_padding_equals_unpadded(name):
    m = build(name)
    x = torch.randn(2, 13, 32)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, :5] = False  # second sequence left-padded by 5
    garbage = x.clone()
    garbage[1, :5] = 1e3 * torch.randn(5, 32)
    y = m(garbage, key_padding_mask=mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1, 5:], m(x[1:, 5:])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[0], m(x[:1])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_float32_under_bf16_and_shapes(name):
    m = build(name)
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = m(x, return_state=True)
        y2, state2 = m.step(x[:, 0], state)
    assert isinstance(state, DeltaNetState) and state.length == 9 and state2.length == 10
    dv = 8 * (2 if name == "gated_deltanet" else 1)
    assert state.s.shape == (2, 4, 8, dv) and state2.s.dtype == torch.float32
    assert state.conv_q.shape == (2, 3, 32) and state.conv_v.shape == (2, 3, 4 * dv)
    assert all(t.dtype == torch.float32 for t in state2.tensors())
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()


def test_gated_decay_in_unit_interval():
    m = build("gated_deltanet")
    with torch.no_grad():
        g = m.log_decay(100 * torch.randn(2, 50, 32))
    assert g.shape == (2, 4, 50) and torch.all(g <= 0) and torch.isfinite(g).all()


def test_sizes_and_flops():
    d, h = 512, 8
    dn = lightformer.create_mixer("deltanet", dim=d, num_heads=h, causal=True)
    gdn = lightformer.create_mixer("gated_deltanet", dim=d, num_heads=h, causal=True)
    ref = lightformer.create_mixer("gated_deltanet", dim=d, num_heads=h, causal=True, head_dim=48)
    assert (dn.head_k_dim, dn.head_v_dim) == (64, 64)
    assert (gdn.head_k_dim, gdn.head_v_dim) == (64, 128)
    assert (ref.head_k_dim, ref.head_v_dim) == (48, 96)
    t = 4096
    # projections dominate the count: 2·T·(4·D² + D·H) for DeltaNet
    assert dn.flops(t) > 2 * t * 4 * d * d and gdn.flops(t) > 2 * t * 8 * d * d
    assert dn.flops(t, batch=3) == pytest.approx(3 * dn.flops(t))
    assert dn.flops(2 * t) == pytest.approx(2 * dn.flops(t), rel=1e-6)  # linear in T (whole chunks)
    assert set(gdn.no_weight_decay) >= {"A_log", "dt_bias"}


@pytest.mark.parametrize("name", NAMES)
def test_options_checked(name):
    for option, value in (("chunk_size", 0), ("conv_size", 0), ("norm_eps", 0.0)):
        with pytest.raises(ValueError, match=option):
            build(name, **{option: value})
    with pytest.raises(ValueError, match="causal"):
        lightformer.create_mixer(name, dim=32, num_heads=4, causal=False)


def test_gated_options_checked():
    for option, value in (("expand_v", 0), ("head_dim", 0), ("dt_min", 0.0)):
        with pytest.raises(ValueError, match=option):
            build("gated_deltanet", **{option: value})
    with pytest.raises(ValueError, match="dt_max"):
        build("gated_deltanet", dt_min=0.2, dt_max=0.1)
