"""Which layers a method takes, how a layer is replaced, and the SVD rank rule (no checkpoint, no training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightformer.compress import COMPRESSORS, LowRankLinear
from lightformer.compress.base import candidate_layers, replace_module, select_layers
from lightformer.compress.svd import energy_rank, factorise, saves_parameters
from lightformer.models import LanguageModel, ModelConfig


def build(**kw) -> LanguageModel:
    cfg = dict(vocab_size=40, dim=32, num_layers=2, num_heads=2, max_len=16)
    cfg.update(kw)
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**cfg)).eval()


def forward(model: nn.Module) -> torch.Tensor:
    return model(torch.arange(12).remainder(40)[None])[0]


@pytest.mark.parametrize("method", ["int8", "svd"])
def test_a_layer_read_directly_is_refused_by_name_with_the_way_out(method):
    model = build(mixer="mamba", position="none")
    compressor = COMPRESSORS.create(method)
    with pytest.raises(ValueError) as err:
        select_layers(compressor, model, forward)
    message = str(err.value)
    assert "backbone.blocks.0.mixer.dt_proj (layer 0's mixer 'mamba')" in message
    assert "reads these nn.Linear weights directly" in message and "exclude='*.dt_proj'" in message
    assert "in_proj" not in message and "out_proj" not in message  # the layers it calls are fine
    layers = select_layers(COMPRESSORS.create(method, exclude="*.dt_proj"), model, forward)
    assert layers and not any(name.endswith("dt_proj") for name in layers)
    assert "backbone.blocks.1.mixer.in_proj" in layers


@pytest.mark.parametrize("mixer, read", [("lmu", "W_h"), ("mlstm", "igate")])
def test_mixers_whose_linear_weights_are_read_are_refused(mixer, read):
    model = build(mixer=mixer, position="none")
    with pytest.raises(ValueError, match=f"mixer.{read} \\(layer 0's mixer '{mixer}'\\)"):
        select_layers(COMPRESSORS.create("int8"), model, forward)


def test_matformer_slices_are_refused_as_ffn_layers():
    model = build(ffn="matformer")
    with pytest.raises(ValueError, match="ffn.fc1 \\(layer 0's FFN 'matformer'\\)"):
        select_layers(COMPRESSORS.create("svd"), model, forward)


def test_pruning_reads_nothing_so_it_takes_every_layer():
    model = build(mixer="mamba", position="none")
    layers = select_layers(COMPRESSORS.create("magnitude_prune"), model, forward)
    assert layers.keys() == candidate_layers(model).keys()
    assert any(n.endswith("dt_proj") for n in layers)
    assert not any(n.startswith("head") for n in candidate_layers(build())), "the (tied) head is not a target"


def exact_low_rank(layer: nn.Linear) -> LowRankLinear:
    """A full-rank LowRankLinear computing exactly ``layer``: W·I or I·W."""
    w, (out, inp) = layer.weight.detach(), layer.weight.shape
    if out >= inp:
        return LowRankLinear.from_factors(torch.eye(inp), w, layer.bias)
    return LowRankLinear.from_factors(w, torch.eye(out), layer.bias)


@pytest.mark.parametrize("kw", [dict(block="sub_ln"), dict(value_residual=True)])
def test_a_replaced_layer_keeps_the_hooks_of_the_block_and_model(kw):
    """Sub-LN's inner norm and the value residual are hooks on the projections: a replacement takes them over."""
    model = build(**kw)
    reference = forward(model)
    for name, layer in candidate_layers(model).items():
        replace_module(model, name, exact_low_rank(layer))
    torch.testing.assert_close(forward(model), reference, rtol=1e-5, atol=1e-5)
    without = build(**kw)
    for name, layer in candidate_layers(without).items():
        parent, _, attr = name.rpartition(".")
        setattr(without.get_submodule(parent), attr, exact_low_rank(layer))  # hooks dropped
    assert (forward(without) - reference).abs().max() > 1e-3, "the check has teeth: the hooks matter"


def test_energy_rank_counts_squared_singular_values():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9/14, 13/14, 14/14
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 1.0) == 3
    assert energy_rank(torch.zeros(4), 0.9) == 1


def test_factorise_keeps_the_energy_and_skips_layers_that_would_not_save():
    torch.manual_seed(0)
    layer = nn.Linear(48, 32)
    with torch.no_grad():  # a rank-4 signal plus a little noise: 90 % of the energy sits in 4 directions
        layer.weight.copy_(torch.randn(32, 4) @ torch.randn(4, 48) + 0.01 * torch.randn(32, 48))
    low, info = factorise(layer, 0.9)
    assert info["rank"] <= 4 and info["energy"] >= 0.9 and isinstance(low, LowRankLinear)
    x = torch.randn(5, 48)
    with torch.no_grad():
        w_r = low.second.weight @ low.first.weight
        err = torch.linalg.matrix_norm(layer.weight - w_r) ** 2 / torch.linalg.matrix_norm(layer.weight) ** 2
        assert float(err) == pytest.approx(1 - info["energy"], abs=1e-5)  # Eckart–Young
        torch.testing.assert_close(low(x), x @ w_r.T + layer.bias)
    dense, info = factorise(nn.Linear(48, 32), 0.99)  # a random layer's flat spectrum
    assert dense is None and not saves_parameters(info["rank"], 48, 32) and info["break_even"] == 48 * 32 / 80
