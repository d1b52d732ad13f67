"""s4d: the two inits (S4D-Lin, S4D-Real) and the Δ range, inits surviving the model's generic pass, config errors,
the complex decoding state, and the FLOP count's T·log T growth."""

from __future__ import annotations

import math

import pytest
import torch

import lightformer
from lightformer import LanguageModel, ModelConfig


def build(**options):
    torch.manual_seed(0)
    return lightformer.create_mixer("s4d", dim=16, num_heads=1, causal=True, **options)


def test_s4d_lin_and_real_inits():
    lin = build(d_state=8).ssm
    torch.testing.assert_close(-torch.exp(lin.log_A_real), torch.full((16, 4), -0.5))
    torch.testing.assert_close(lin.A_imag, (math.pi * torch.arange(4.0)).expand(16, 4))
    real = build(d_state=8, init="real").ssm
    torch.testing.assert_close(-torch.exp(real.log_A_real), -torch.arange(1.0, 5.0).expand(16, 4))
    assert torch.all(real.A_imag == 0)
    for ssm in (lin, real):
        dt = torch.exp(ssm.log_dt)
        assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
        _, b_bar, _ = ssm.discretize()
        assert b_bar.dtype == torch.complex64


def test_init_survives_the_model():
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=16, dim=16, num_layers=2, num_heads=1, mixer="s4d", max_len=8,
                                   position="learned"))
    for block in lm.backbone.blocks:
        torch.testing.assert_close(torch.exp(block.mixer.ssm.log_A_real), torch.full((16, 32), 0.5))
        assert block.mixer.D.std() > 0.3  # N(0, 1), not the generic N(0, 0.02)


@pytest.mark.parametrize("option,value", [("d_state", 7), ("d_state", 0), ("dt_min", 0.0), ("dt_max", 1e-4),
                                          ("init", "legs")])
def test_bad_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option):
        build(**{option: value})


def test_causal_only():
    with pytest.raises(ValueError, match="causal=False"):
        lightformer.create_mixer("s4d", dim=16, num_heads=1, causal=False)


def test_complex_state_and_its_size():
    m = build(d_state=8)
    s32 = m.init_state(3)
    assert s32.x.dtype == torch.complex64 and s32.x.shape == (3, 16, 4) and s32.nbytes() == 3 * 16 * 4 * 8
    s64 = m.double().init_state(3, dtype=torch.float64)
    assert s64.x.dtype == torch.complex128 and s64.nbytes() == 3 * 16 * 4 * 16


def test_flops_grow_as_t_log_t():
    m = lightformer.create_mixer("s4d", dim=512, num_heads=8, causal=True)
    f1, f2 = m.flops(32768), m.flops(65536)
    assert 2.0 < f2 / f1 < 2.2
