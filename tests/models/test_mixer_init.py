"""Init is owned by the mixer: the model's generic GPT-2 init runs first, then each mixer's ``init_weights``, so a
paper's special init survives ``LanguageModel(...)``; residual projections are the mixer's to name; parameters a
mixer declares in ``no_weight_decay`` are not decayed by either optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lightformer import MIXERS, LanguageModel, ModelConfig
from lightformer.mixers import Capabilities, Mixer, MixerConfig
from lightformer.train.config import TrainConfig
from lightformer.train.optim import build_optimizer


@dataclass(frozen=True)
class ToyConfig(MixerConfig):
    pass


class ToyMixer(Mixer):
    """A Mamba-shaped toy: a dt projection whose bias must start at -4.6, an ``A_log`` matrix exempt from decay,
    and an output projection named ``out_proj``."""

    config_class = ToyConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=False, decode=False, complexity="T·d",
                                time_exponent=1)
    residual_projections = ("out_proj.weight",)
    no_weight_decay = ("A_log", "dt_proj.bias")

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.dt_proj = nn.Linear(config.dim, config.dim)
        self.A_log = nn.Parameter(torch.zeros(config.dim, 4))
        self.out_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        with torch.no_grad():
            self.dt_proj.bias.fill_(-4.6)
            self.A_log.copy_(torch.log(torch.arange(1, 5, dtype=torch.float32)).expand_as(self.A_log))

    def _forward(self, x, key_padding_mask):
        return self.out_proj(self.dt_proj(x) * self.A_log.exp().mean(-1))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(MIXERS._entries, "toy_init", ToyMixer)
    monkeypatch.setattr(ToyMixer, "registry_name", "toy_init")
    return "toy_init"


def model(mixer: str, layers: int = 4) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=layers, num_heads=4, mixer=mixer,
                                     max_len=16, position="learned"))


def test_the_mixers_init_survives_the_model(toy):
    lm = model(toy)
    for block in lm.backbone.blocks:
        assert torch.all(block.mixer.dt_proj.bias == -4.6)
        torch.testing.assert_close(block.mixer.A_log[0], torch.log(torch.arange(1.0, 5.0)))
        # the residual projection the mixer names is scaled: std 0.02 / sqrt(2 * 4) = 0.00707
        assert block.mixer.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
        assert block.mixer.dt_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_default_mixers_keep_gpt2_init():
    lm = model("softmax")
    for block in lm.backbone.blocks:
        assert block.mixer.out.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
        assert block.mixer.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_declared_parameters_are_not_decayed(toy, optimizer):
    lm = model(toy, layers=2)
    opt = build_optimizer(lm, TrainConfig(optimizer=optimizer, weight_decay=0.1))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for block in lm.backbone.blocks:
        assert id(block.mixer.A_log) not in decay and id(block.mixer.dt_proj.bias) not in decay
        assert id(block.mixer.dt_proj.weight) in decay
    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(lm.parameters()))
