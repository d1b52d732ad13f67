"""Mixer-level checks of the MetaFormer family (``fnet``, ``gfnet``, ``poolformer``, ``global_context``) beyond the
registry-wide contract: option errors name the option, refused requests (causal, padding, T > max_len) name the
argument, GFNet's T < max_len semantics, parameter-free mixers hold no parameters, GCNet's reference init survives
the model, and ``flops`` follows its docstring formula."""

from __future__ import annotations

import math

import pytest
import torch

import lightformer
from lightformer import LanguageModel, ModelConfig

D, H = 32, 4


def make(name, **options):
    torch.manual_seed(0)
    return lightformer.create_mixer(name, dim=D, num_heads=H, **options)


@pytest.mark.parametrize("name,options,match", [
    ("fnet", {"norm": "unit"}, "norm must be one of"),
    ("gfnet", {}, "max_len is required"),
    ("gfnet", {"max_len": 0}, "max_len"),
    ("poolformer", {"pool_size": 0}, "pool_size must be a positive"),
    ("poolformer", {"pool_size": 4}, "pool_size must be odd when causal=False"),
    ("global_context", {"ratio": 0.0}, "ratio must be in"),
    ("global_context", {"ratio": 1.5}, "ratio must be in"),
    ("global_context", {"chunk_size": 0}, "chunk_size"),
])
def test_bad_options_name_the_option(name, options, match):
    with pytest.raises(ValueError, match=match):
        make(name, **options)


def test_even_pool_size_is_fine_when_causal():
    m = make("poolformer", pool_size=4, causal=True)
    assert m(torch.randn(1, 9, D)).shape == (1, 9, D)


@pytest.mark.parametrize("name,options", [("fnet", {}), ("gfnet", {"max_len": 16})])
def test_spectral_mixers_refuse_causal_and_padding(name, options):
    with pytest.raises(ValueError, match="causal=True"):
        make(name, causal=True, **options)
    m = make(name, **options)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(torch.randn(1, 16, D), key_padding_mask=torch.ones(1, 16, dtype=torch.bool))


def test_gfnet_length_semantics():
    m = make("gfnet", max_len=24).double()
    x = torch.randn(2, 17, D, dtype=torch.float64)
    padded = torch.cat([x, torch.zeros(2, 7, D, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(m(x), m(padded)[:, :17], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="max_len=24"):
        m(torch.randn(1, 25, D, dtype=torch.float64))
    assert m.complex_weight.shape == (13, D, 2)


def test_parameter_free_mixers():
    for name, options in (("fnet", {}), ("poolformer", {}), ("poolformer", {"causal": True})):
        m = make(name, **options)
        assert list(m.parameters()) == [] and m.residual_projections == ()


def test_global_context_reference_init_survives_the_model():
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=2, num_heads=4, mixer="global_context",
                                   max_len=16, position="learned"))
    for block in lm.backbone.blocks:
        mixer = block.mixer
        assert mixer.config.planes == 4  # 64 / 16, the paper's r = 16
        last = mixer.channel_add_conv[3]
        assert torch.all(last.weight == 0) and torch.all(last.bias == 0)
        assert mixer.conv_mask.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.3)
        x = torch.randn(2, 9, 64)
        assert torch.all(mixer(x) == 0)  # the GC block starts as the identity


def test_global_context_output_is_the_same_at_every_position_when_bidirectional():
    m = make("global_context", ratio=0.25)
    y = m(torch.randn(2, 11, D))
    torch.testing.assert_close(y, y[:, :1].expand_as(y), rtol=0, atol=0)


def test_flops_follow_the_formulas():
    t = 4096
    assert make("fnet").flops(t) == pytest.approx(2.5 * t * D * 5 + 5 * (D // 2 + 1) * t * 12)
    assert make("gfnet", max_len=t).flops(t, batch=2) == pytest.approx(2 * D * (5 * t * 12 + 6 * (t // 2 + 1)))
    assert make("poolformer").flops(t) == pytest.approx(t * D * 4)
    bidir, causal = make("global_context"), make("global_context", causal=True)
    p = D // 16
    assert bidir.flops(t) == pytest.approx(4 * t * D + 4 * D * p + 8 * p)
    assert causal.flops(t) == pytest.approx(2 * t * D + 2 * t * 64 * D + 2 * t * D + t * (4 * D * p + 8 * p))
