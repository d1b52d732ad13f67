"""The trainer's optimizers: which parameters Muon takes, one schedule for all groups, checkpoints of the chain."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightformer.tasks.text import Corpus
from lightformer.train import Trainer
from lightformer.train.config import build_run_config
from lightformer.train.optim import OptimizerChain, build_optimizer


def tiny(**train):
    return build_run_config("tiny", overrides=[(f"train.{k}", v) for k, v in train.items()])


@functools.cache
def _stdlib() -> Corpus:
    return Corpus.stdlib()


def _trainer(**train):
    return Trainer(tiny(**train), corpus=_stdlib(), log=lambda s: None)


def test_muon_takes_exactly_the_block_linear_weights():
    trainer = _trainer(optimizer="muon")
    opt = trainer.optimizer
    assert isinstance(opt, OptimizerChain)
    adamw, muon = opt.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    blocks = trainer.model.backbone.blocks
    expected = {id(m.weight) for m in blocks.modules() if isinstance(m, nn.Linear)}
    got_muon = [id(p) for g in muon.param_groups for p in g["params"]]
    got_adamw = [id(p) for g in adamw.param_groups for p in g["params"]]
    assert set(got_muon) == expected and len(got_muon) == len(expected) == 4 * 2  # qkv, out, fc1, fc2 × 2 layers
    every = {id(p) for p in trainer.model.parameters()}
    assert set(got_muon) | set(got_adamw) == every and not set(got_muon) & set(got_adamw)
    # the embedding (tied to the head) is AdamW's, with weight decay; norms and biases without
    embed = trainer.model.backbone.embed.weight
    decayed = [id(p) for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert id(embed) in decayed


def test_schedule_reaches_every_group_and_state_round_trips():
    trainer = _trainer(optimizer="muon", max_steps=6, warmup_steps=2)
    trainer.fit(progress_bar=False)
    lrs = {g["lr"] for opt in trainer.optimizer.optimizers for g in opt.param_groups}
    assert len(lrs) == 1, f"one schedule for all groups, got {lrs}"
    sd = trainer.optimizer.state_dict()
    n = sum(1 for _ in trainer.model.parameters())
    assert sorted(i for g in sd["param_groups"] for i in g["params"]) == list(range(n))
    other = _trainer(optimizer="muon", max_steps=6, warmup_steps=2)
    other.optimizer.load_state_dict(sd)
    for a, b in zip(trainer.optimizer.optimizers, other.optimizer.optimizers):
        for pa, pb in zip((p for g in a.param_groups for p in g["params"]),
                          (p for g in b.param_groups for p in g["params"])):
            for key, value in a.state[pa].items():
                torch.testing.assert_close(b.state[pb][key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="param groups"):  # an AdamW state does not fit the chain
        other.optimizer.load_state_dict({"state": {}, "param_groups": [{"params": []}]})


def test_muon_learns_and_resumes_exactly(tmp_path):
    cfg = dict(optimizer="muon", max_steps=30, eval_interval=10, warmup_steps=5)
    whole = _trainer(**cfg).fit(progress_bar=False)
    assert whole.val_loss < 4.5, f"30 Muon steps should leave ln(256) = 5.55 nats well behind, got {whole.val_loss}"
    first = _trainer(**cfg, out_dir=str(tmp_path))
    first.fit(progress_bar=False, until_step=15)
    second = _trainer(**cfg, out_dir=str(tmp_path))
    second.resume(str(tmp_path))
    resumed = second.fit(progress_bar=False)
    assert resumed.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
    assert resumed.val_loss == pytest.approx(whole.val_loss, abs=1e-6)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'muon', got 'sgd'"):
        tiny(optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(nn.Linear(2, 2), SimpleNamespace(optimizer="sgd"))
    with pytest.raises(ValueError, match="optimizer='muon' needs a model with nn.Linear layers"):
        build_optimizer(nn.Linear(2, 2), dataclasses.replace(tiny().train, optimizer="muon"))


@pytest.mark.parametrize("native", [True, False])
def test_muon_warns_where_its_bf16_newton_schulz_is_emulated(monkeypatch, native):
    from lightformer.train import optim

    monkeypatch.setattr(optim, "native_bf16", lambda device: native)
    model = torch.nn.Sequential()
    model.blocks = nn.ModuleList([nn.Linear(4, 4)])
    tc = _trainer(optimizer="muon").config.train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optim.build_optimizer(model, tc)
    emulated = [w for w in caught if "Newton-Schulz iteration in bf16" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
