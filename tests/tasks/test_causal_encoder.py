"""Classification tasks take causal-only mixers: the encoder is bidirectional where the mixer can be, causal where
it is causal-only (state-space and recurrent mixers), and either trains; the suite offers every mixer to LRA."""

from __future__ import annotations

import pytest
import torch

from lightformer import MIXERS, create_task
from lightformer.bench.suite import default_mixers
from lightformer.models.config import ModelConfig
from lightformer.tasks import TASKS
from lightformer.tasks.base import encoder_causal


def model_config(mixer: str) -> ModelConfig:
    options = MIXERS.get(mixer).example_options
    return ModelConfig(dim=32, num_layers=1, num_heads=2, max_len=64, position="none", mixer=mixer,
                       mixer_options=dict(options))


@pytest.mark.parametrize("name", ["listops", "retrieval"])
@pytest.mark.parametrize("mixer,causal", [("softmax", False), ("mamba", True), ("gla", True)])
def test_encoder_direction_follows_the_mixer_and_trains(name, mixer, causal):
    task = create_task(name, **TASKS.get(name).example_options)
    config = model_config(mixer)
    assert encoder_causal(config) is causal
    torch.manual_seed(0)
    model = task.build_model(config)
    assert any(getattr(m, "config", None) is not None and getattr(m.config, "causal", None) is causal
               for m in model.modules() if isinstance(m, MIXERS.get(mixer)))
    batch = task.sample("train", 4, seed=0)
    out = task.loss(model, batch)
    assert torch.isfinite(out.loss) and out.count == 4
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "mixer" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_suite_offers_every_mixer_to_classification_and_only_causal_ones_to_probes():
    assert set(default_mixers("listops")) == set(MIXERS.names())
    assert "mamba" in default_mixers("mqar") and "fnet" not in default_mixers("mqar")
