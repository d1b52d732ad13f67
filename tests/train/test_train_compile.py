"""``train.compile`` (``lightformer train --compile``): the training forward runs compiled, the rest stays the plain
module, and a mixer that declares it cannot be compiled is refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightformer.models import ModelConfig
from lightformer.tasks.text import Corpus
from lightformer.train import Trainer
from lightformer.train.compiled import compile_for_training
from lightformer.train.config import build_run_config

CORPUS = Corpus.from_bytes(bytes(range(32, 127)) * 60, name="ascii")


def tiny(**train):
    return build_run_config("tiny", overrides=[(f"train.{k}", v) for k, v in train.items()])


def test_a_mixer_that_cannot_compile_is_refused_by_name():
    with pytest.raises(ValueError, match=r"train.compile=true: mixer 'mlstm' cannot be compiled \(torch 2.13"):
        compile_for_training(nn.Identity(), ModelConfig(mixer="mlstm", position="none"))
    with pytest.raises(ValueError, match="mixer 'reformer_lsh'"):
        compile_for_training(nn.Identity(), ModelConfig(schedule="softmax; reformer_lsh@1", position="none"))


def test_compiled_training_follows_the_eager_run(monkeypatch):
    # TorchDynamo with the eager backend (no code generation) keeps the test cheap; the trainer's wiring is what is
    # checked: the compiled wrapper trains the model's own parameters, which the optimizer steps and evaluation reads
    real = torch.compile
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or real(m, backend="eager"))
    eager = Trainer(tiny(max_steps=4, eval_interval=2, eval_iters=1), corpus=CORPUS, log=lambda s: None)
    compiled = Trainer(tiny(max_steps=4, eval_interval=2, eval_iters=1, compile=True), corpus=CORPUS,
                       log=lambda s: None)
    assert calls == [compiled.model] and compiled._forward_model is not compiled.model
    assert eager._forward_model is eager.model
    a, b = eager.fit(progress_bar=False), compiled.fit(progress_bar=False)
    assert [h["step"] for h in b.history] == [2, 4]
    for ha, hb in zip(a.history, b.history):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5, abs=1e-6)
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-5, abs=1e-6)
    # the checkpointed module's keys are the plain model's, not the wrapper's `_orig_mod.` ones
    assert not any(k.startswith("_orig_mod") for k in compiled.model.state_dict())
    assert build_run_config("tiny").train.compile is False
