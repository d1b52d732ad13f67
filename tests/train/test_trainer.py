"""The trainer: learning on real text, schedule, time budget, checkpoints and exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.tasks.text import Corpus
from lightformer.train import Trainer, parse_duration
from lightformer.train.checkpoint import load_trained
from lightformer.train.config import build_run_config
from lightformer.train.trainer import lr_at


@pytest.fixture(scope="module")
def stdlib():
    return Corpus.stdlib()


def tiny(**train):
    overrides = [(f"train.{k}", v) for k, v in train.items()]
    return build_run_config("tiny", overrides=overrides)


def test_loss_falls_on_stdlib(stdlib):
    trainer = Trainer(tiny(max_steps=200, eval_interval=100, eval_iters=5), corpus=stdlib, log=lambda s: None)
    initial = trainer.evaluate("val", 5)["loss"]
    result = trainer.fit(progress_bar=False)
    assert initial > 5.0, "an untrained byte model is near ln(256) = 5.55 nats"
    assert result.val_loss < 3.3, f"200 steps should reach < 3.3 nats/byte, got {result.val_loss:.3f}"
    assert result.val_bpc == pytest.approx(result.val_loss / math.log(2))
    assert result.steps == 200 and result.tokens == 200 * 8 * 32


def test_checkpoint_round_trip(stdlib, tmp_path):
    trainer = Trainer(tiny(max_steps=5, out_dir=str(tmp_path)), corpus=stdlib, log=lambda s: None)
    trainer.fit(progress_bar=False)
    model, task, config, state = load_trained(tmp_path)
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(model(idx)[0], trainer.model.eval()(idx)[0], rtol=0, atol=0)
    assert task.name == "lm" and task.tokenizer.kind == "byte" and state["step"] == 5 and config.model.dim == 32
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert not (tmp_path / "checkpoint.tmp").exists()


def test_resumed_run_continues_with_the_same_loss(stdlib, tmp_path):
    cfg = dict(max_steps=30, eval_interval=10, warmup_steps=5)
    whole = Trainer(tiny(**cfg), corpus=stdlib, log=lambda s: None).fit(progress_bar=False)
    first = Trainer(tiny(**cfg, out_dir=str(tmp_path)), corpus=stdlib, log=lambda s: None)
    first.fit(progress_bar=False, until_step=15)  # the same run, interrupted half-way
    second = Trainer(tiny(**cfg, out_dir=str(tmp_path)), corpus=stdlib, log=lambda s: None)
    second.resume(str(tmp_path))
    assert second.step == 15
    resumed = second.fit(progress_bar=False)
    assert resumed.steps == 30
    assert resumed.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
    assert resumed.val_loss == pytest.approx(whole.val_loss, abs=1e-6)


def test_time_budget_stops_training(stdlib):
    trainer = Trainer(tiny(max_steps=None, max_time="1.5s", eval_interval=1000), corpus=stdlib, log=lambda s: None)
    result = trainer.fit(progress_bar=False)
    assert 1.5 <= result.seconds < 6.0
    assert result.steps > 1


@pytest.mark.parametrize("task, stop_at, steps", [
    ("lm", 100.0, 4),   # bpc (lower is better) <= 100 at the first evaluation
    ("lm", -1.0, 12),   # never: the whole budget
    ("memorization", 0.0, 4),  # accuracy (higher is better) >= 0 at once
    ("memorization", 1.01, 12),
])
def test_stop_at_ends_training_at_the_first_evaluation_that_reaches_it(stdlib, task, stop_at, steps):
    logs: list[str] = []
    overrides = [("train.max_steps", 12), ("train.eval_interval", 4), ("train.eval_iters", 1),
                 ("train.stop_at", stop_at)]
    if task != "lm":
        overrides += [("task.name", task), ("task.options.vocab_size", 16), ("task.options.seq_len", 8)]
    trainer = Trainer(build_run_config("tiny", overrides=overrides), corpus=stdlib if task == "lm" else None,
                      log=logs.append)
    result = trainer.fit(progress_bar=False)
    assert result.steps == steps and [row["step"] for row in trainer.history] == list(range(4, steps + 1, 4))
    assert any(f"reached stop_at={stop_at}, stopping" in line for line in logs) == (steps == 4)


@pytest.mark.parametrize("bad", [True, "0.99", float("nan"), float("inf")])
def test_stop_at_must_be_a_finite_number(bad):
    with pytest.raises(ValueError, match="stop_at must be a finite number"):
        tiny(stop_at=bad)


def test_schedule_warmup_then_cosine():
    cfg = tiny(lr=1e-3, min_lr=1e-4, warmup_steps=10).train
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(5.5e-4)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(1e-4)


def test_durations_and_config_errors():
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="max_time"):
        parse_duration("ten minutes")
    with pytest.raises(TypeError, match="unknown train option.*'lrate'"):
        build_run_config("tiny", overrides=[("train.lrate", 1.0)])
    with pytest.raises(TypeError, match="unknown model option.*'depth'"):
        build_run_config("tiny", overrides=[("model.depth", 3)])
    with pytest.raises(ValueError, match="unknown preset"):
        build_run_config("huge")
    with pytest.raises(ValueError, match="max_len=32 is below the length T=64"):
        Trainer(tiny(block_size=64), corpus=Corpus.from_bytes(b"x" * 1000, name="x"))
    cfg = build_run_config("tiny", overrides=[("model.mixer", "sliding_window"),
                                              ("model.mixer_options.window", 8)])
    assert cfg.model.mixer_options == {"window": 8}


def test_resume_refuses_other_data(stdlib, tmp_path):
    Trainer(tiny(max_steps=2, out_dir=str(tmp_path)), corpus=stdlib, log=lambda s: None).fit(progress_bar=False)
    other = Trainer(tiny(max_steps=4), corpus=Corpus.from_bytes(bytes(range(256)) * 40, name="other"),
                    log=lambda s: None)
    with pytest.raises(ValueError, match="other data"):
        other.resume(str(tmp_path))
