"""The ``matformer`` FFN: its nested widths, the per-step granularity schedule (deterministic, shared by the layers,
exact across a save and resume), and sub-model extraction (equal to the full model at that width, smaller, and
saved/loaded by the checkpoint code)."""

from __future__ import annotations

import dataclasses
import pathlib
import sysconfig

import pytest
import torch

from lightformer import LanguageModel, ModelConfig
from lightformer.blocks import FFNS
from lightformer.blocks.ffns import extract_submodel, set_model_granularity
from lightformer.blocks.ffns.matformer import MatFormerFFN
from lightformer.tasks.text import Corpus
from lightformer.train import Trainer, checkpoint
from lightformer.train.config import build_run_config

GRANULARITIES = (0.125, 0.25, 0.5, 1.0)


def config(**kw) -> ModelConfig:
    base = dict(vocab_size=40, dim=16, num_layers=3, num_heads=2, ffn="matformer", ffn_mult=4.0, max_len=32)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus():
    source = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
    return Corpus.from_bytes(source.read_bytes(), name="argparse.py")


def test_options_are_checked():
    cfg = FFNS.make_config("matformer", dim=8, granularities=[0.25, 1])
    assert cfg.granularities == (0.25, 1.0)
    for bad in ([], [0.5], [0.5, 0.25, 1.0], [0.0, 1.0], [0.5, 1.5], [0.5, 0.5, 1.0]):
        with pytest.raises(ValueError, match="granularities"):
            FFNS.make_config("matformer", dim=8, granularities=bad)
    ffn = FFNS.create("matformer", dim=8)
    for bad in (0, 1.5, -0.5, True):
        with pytest.raises(ValueError, match="fraction"):
            ffn.set_granularity(bad)
    # a config with its granularities survives the JSON round trip of checkpoints
    cfg = config(ffn_options={"granularities": [0.5, 1.0], "seed": 3})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_nested_widths_are_prefixes_of_the_full_ffn():
    ffn = FFNS.create("matformer", dim=8, mult=4.0).double().eval()
    with torch.no_grad():
        for p in ffn.parameters():
            p.normal_()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert [ffn.width(g) for g in GRANULARITIES] == [4, 8, 16, 32]
    for g in GRANULARITIES:
        ffn.set_granularity(g)
        m = ffn.width(g)
        h = torch.nn.functional.gelu(x @ ffn.fc1.weight[:m].T + ffn.fc1.bias[:m])
        torch.testing.assert_close(ffn(x), h @ ffn.fc2.weight[:, :m].T + ffn.fc2.bias, rtol=1e-12, atol=1e-12)
        assert ffn.last_width == m
    ffn.set_granularity(None)
    ffn(x)
    assert ffn.last_width == 32 and int(ffn.train_steps) == 0, "eval forwards run the full width, off the clock"


def test_schedule_is_deterministic_and_seeded():
    def widths(seed, steps=40):
        torch.manual_seed(seed + 100)  # a different init must not change the schedule
        ffn = FFNS.create("matformer", dim=8, mult=4.0, seed=seed).train()
        out = []
        for _ in range(steps):
            ffn(torch.randn(3, 8))
            out.append(ffn.last_width)
        assert int(ffn.train_steps) == steps
        assert out == [ffn.width(ffn.scheduled_granularity(i)) for i in range(steps)]
        return out

    first = widths(0)
    assert first == widths(0)
    assert set(first) == {4, 8, 16, 32}, "every granularity is trained"
    assert widths(1) != first
    counts = [first.count(w) for w in (4, 8, 16, 32)]
    assert min(counts) >= 4, f"a uniform draw over 40 steps, got counts {counts}"


def test_every_layer_runs_the_same_granularity():
    torch.manual_seed(0)
    model = LanguageModel(config()).train()
    modules = [m for m in model.modules() if isinstance(m, MatFormerFFN)]
    assert len(modules) == 3
    seen = set()
    for step in range(12):
        model(torch.randint(0, 40, (2, 8)))
        assert len({m.last_width for m in modules}) == 1
        assert all(int(m.train_steps) == step + 1 for m in modules)
        seen.add(modules[0].last_width)
    assert len(seen) > 1


@pytest.mark.parametrize("fraction", [*GRANULARITIES, 0.375])
def test_extracted_submodel_equals_the_full_model_at_that_width(fraction):
    torch.manual_seed(0)
    model = LanguageModel(config()).double().eval()
    with torch.no_grad():  # weights well away from the init, so every hidden neuron matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 40, (2, 11))
    set_model_granularity(model, fraction)
    with torch.no_grad():
        hidden = model.backbone(idx)
        logits = model(idx)[0]
    sub = extract_submodel(model, fraction)
    m = round(fraction * 64)
    assert type(sub) is LanguageModel and not any(isinstance(x, MatFormerFFN) for x in sub.modules())
    assert sub.config == dataclasses.replace(model.config, ffn="mlp", ffn_options={"hidden": m})
    assert sub.config is sub.backbone.config
    n_full = sum(p.numel() for p in model.parameters())
    n_sub = sum(p.numel() for p in sub.parameters())
    assert n_full - n_sub == 3 * (64 - m) * (2 * 16 + 1)
    with torch.no_grad():
        torch.testing.assert_close(sub.backbone(idx), hidden, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sub(idx)[0], logits, rtol=1e-6, atol=1e-6)
        # stand-alone: a model built from the sub-model's config takes its weights, and decodes
        fresh = LanguageModel(sub.config).double().eval()
        fresh.load_state_dict(sub.state_dict())
        state = fresh.init_state(2, dtype=torch.float64)
        for t in range(11):
            step_logits, state = fresh.step(idx[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, -1], rtol=1e-6, atol=1e-6)
    # the full model is left as it was
    assert sum(isinstance(x, MatFormerFFN) for x in model.modules()) == 3 and model.config.ffn == "matformer"


def test_extraction_refuses_other_models():
    with pytest.raises(ValueError, match="ffn='matformer'"):
        extract_submodel(LanguageModel(config(ffn="mlp")), 0.5)
    with pytest.raises(ValueError, match="fraction"):
        extract_submodel(LanguageModel(config()), 0.0)
    with pytest.raises(ValueError, match="no matformer FFN"):
        set_model_granularity(LanguageModel(config(ffn="mlp")), 0.5)


def run(corpus, out_dir=None, **train):
    overrides = [("model.ffn", "matformer"), ("train.max_steps", 8), ("train.eval_interval", 4),
                 ("train.eval_iters", 1), ("train.warmup_steps", 2)]
    overrides += [(f"train.{k}", v) for k, v in train.items()]
    if out_dir is not None:
        overrides.append(("train.out_dir", str(out_dir)))
    return Trainer(build_run_config("tiny", overrides=overrides), corpus=corpus, log=lambda s: None)


def test_schedule_survives_save_and_resume(corpus, tmp_path):
    whole = run(corpus).fit(progress_bar=False)
    run(corpus, tmp_path).fit(progress_bar=False, until_step=4)
    second = run(corpus, tmp_path)
    second.resume(str(tmp_path))
    clocks = [int(m.train_steps) for m in second.model.modules() if isinstance(m, MatFormerFFN)]
    assert clocks == [4, 4], "the schedule's clock is restored with the weights"
    resumed = second.fit(progress_bar=False)
    assert resumed.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
    assert resumed.val_loss == pytest.approx(whole.val_loss, abs=1e-6)
    # the check has teeth: the same resume with the clock reset trains other widths and ends elsewhere
    third = run(corpus, tmp_path / "other")
    third.resume(str(tmp_path))
    for m in third.model.modules():
        if isinstance(m, MatFormerFFN):
            m.train_steps.zero_()
    assert third.fit(progress_bar=False).train_loss != pytest.approx(whole.train_loss, abs=1e-6)


def test_submodel_saves_and_loads_through_the_checkpoint_code(corpus, tmp_path):
    trainer = run(corpus, tmp_path / "full")
    trainer.fit(progress_bar=False)
    full = trainer.model.eval()
    sub = extract_submodel(full, 0.25)
    run_config = dataclasses.replace(trainer.config, model=sub.config)
    state = dict(trainer.trainer_state(), config=run_config.to_dict())
    checkpoint.save(tmp_path / "sub", sub, torch.optim.AdamW(sub.parameters()), state)
    loaded, task, loaded_config, _ = checkpoint.load_trained(tmp_path / "sub")
    assert loaded_config.model.ffn == "mlp" and loaded_config.model.ffn_options == {"hidden": 32}
    idx = torch.randint(0, 256, (2, 32))
    set_model_granularity(full, 0.25)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], sub(idx)[0], rtol=0, atol=0)
        torch.testing.assert_close(loaded(idx)[0], full(idx)[0], rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in full.parameters())
