"""mamba-specific checks beyond the registry-wide contract: the paper's init survives the model's generic init,
dt_rank's auto value and the unused num_heads, left padding is exact, float32 states under bf16 autocast, the
parameters exempt from weight decay exist, and config errors name the option."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lightformer
from lightformer import LanguageModel, ModelConfig
from lightformer.train.config import TrainConfig
from lightformer.train.optim import build_optimizer


def mixer(**options) -> lightformer.Mixer:
    torch.manual_seed(0)
    return lightformer.create_mixer("mamba", **{"dim": 32, "num_heads": 4, "causal": True, **options})


def test_init_survives_the_model_and_matches_the_paper():
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=2, num_heads=4, mixer="mamba",
                                   max_len=16, position="learned"))
    for block in lm.backbone.blocks:
        m = block.mixer
        cfg = m.config
        assert cfg.rank == 4  # ceil(64 / 16)
        torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 17.0)).expand(128, 16))
        assert torch.all(m.D == 1.0)
        dt = F.softplus(m.dt_proj.bias)
        assert dt.min() >= cfg.dt_min * 0.999 and dt.max() <= cfg.dt_max * 1.001
        assert dt.log().std() > 0.5  # log-uniform over [1e-3, 0.1] (std of U[log 1e-3, log 0.1] = 1.33)
        assert m.dt_proj.weight.abs().max() <= cfg.rank ** -0.5
        assert m.dt_proj.weight.std() > 0.5 * cfg.rank ** -0.5 / math.sqrt(3)
        # the residual projection got the model's scaled init
        assert m.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.15)


def test_sizes_dt_rank_and_unused_num_heads():
    a, b = mixer(num_heads=1), mixer(num_heads=8)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert a.x_proj.weight.shape == (2 + 2 * 16, 64)  # dt_rank = ceil(32 / 16) = 2, B and C of d_state 16
    assert mixer(dt_rank=5).dt_proj.weight.shape == (64, 5)
    assert mixer(expand=3).in_proj.weight.shape == (2 * 96, 32)


def test_left_and_right_padding_are_exact():
    m = mixer(d_state=4, chunk_size=4).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[0, 4:] = True  # left-padded: 9 real tokens at the end
    mask[1, :6] = True  # right-padded
    garbage = torch.where(mask[..., None], x, 5 * torch.randn_like(x))
    y = m(garbage, key_padding_mask=mask)
    torch.testing.assert_close(y[0, 4:], m(x[:1, 4:])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y[1, :6], m(x[1:, :6])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.oracle(garbage, key_padding_mask=mask), y, rtol=1e-10, atol=1e-10)


def test_state_stays_float32_under_bf16_autocast():
    m = mixer(d_state=4)
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = m(x, return_state=True)
        y_t, s2 = m.step(x[:, 0], s)
    assert s.ssm.dtype == s.conv.dtype == s2.ssm.dtype == s2.conv.dtype == torch.float32
    assert s.ssm.shape == (2, 64, 4) and s.conv.shape == (2, 3, 64)
    assert torch.isfinite(y).all() and torch.isfinite(y_t).all()


def test_no_weight_decay_names_real_parameters():
    m = mixer()
    names = dict(m.named_parameters())
    for pattern in m.no_weight_decay:
        assert pattern in names, pattern
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=32, num_layers=1, num_heads=4, mixer="mamba", max_len=8))
    opt = build_optimizer(lm, TrainConfig(weight_decay=0.1))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    mm = lm.backbone.blocks[0].mixer
    assert id(mm.A_log) not in decay and id(mm.conv.weight) not in decay
    assert id(mm.in_proj.weight) in decay


@pytest.mark.parametrize("options,name", [
    ({"d_state": 0}, "d_state"), ({"d_conv": 0}, "d_conv"), ({"expand": 0}, "expand"),
    ({"chunk_size": 0}, "chunk_size"), ({"dt_rank": 0}, "dt_rank"), ({"dt_min": 0.2}, "dt_min"),
    ({"dt_init_floor": 0.0}, "dt_init_floor"), ({"causal": False}, "causal"),
])
def test_bad_options_name_the_option(options, name):
    with pytest.raises(ValueError, match=name):
        mixer(**options)
