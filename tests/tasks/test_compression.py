"""``compression`` (MAD): the targets are the inputs to rebuild (checked from the inputs alone), the autoencoder
sees only the last position's state, and its loss and accuracy equal a hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightformer import ModelConfig
from lightformer.models.heads import CompressionAutoEncoder
from lightformer.tasks import IGNORE, create_task

MODEL = ModelConfig(dim=32, num_layers=1, num_heads=2, max_len=8, position="none")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_targets_are_the_inputs(split):
    task = create_task("compression", num_train_examples=0)
    x, y = task.sample(split, 2000)
    assert x.shape == y.shape == (2000, 32) and torch.equal(x, y) and int((y == IGNORE).sum()) == 0
    assert (x[:, -1] == 15).all() and int(x[:, :-1].max()) == 14 and int(x[:, :-1].min()) == 0
    assert abs(float(x[:, :-1].float().mean()) - 7.0) < 0.1  # uniform over t0..t14
    assert task.vocab[-1] == "compress" and len(task.vocab) == 16


def test_decoder_sees_only_the_last_state():
    task = create_task("compression", seq_len=12, num_train_examples=20)
    torch.manual_seed(0)
    model = task.build_model(MODEL)
    assert isinstance(model, CompressionAutoEncoder) and model.config.causal
    x, _ = task.sample("val", 3)
    logits = model(x)
    assert logits.shape == (3, 12, 16) and logits.dtype == torch.float32
    code = model.encode(x)
    assert code.shape == (3, 32)
    torch.testing.assert_close(model.decode(code, 12), logits)
    # the same code gives the same reconstruction whatever the inputs were
    torch.testing.assert_close(model.decode(code[:1].expand(3, -1), 12), logits[:1].expand(3, -1, -1))
    assert not torch.allclose(logits[0], logits[1])


def test_loss_and_accuracy_by_hand():
    task = create_task("compression", seq_len=10, num_train_examples=20)
    torch.manual_seed(1)
    model = task.build_model(MODEL)
    x, y = task.sample("train", 6, seed=0)
    y = y.clone()
    y[:, :3] = IGNORE  # the loss honours IGNORE
    out = task.loss(model, (x, y))
    logits = model(x)[:, 3:]
    want = F.cross_entropy(logits.reshape(-1, 16), y[:, 3:].reshape(-1))
    assert out.count == 6 * 7
    torch.testing.assert_close(out.loss, want)
    assert out.sums["accuracy"] == float((logits.argmax(-1) == y[:, 3:]).sum())
    assert out.sums["loss"] == pytest.approx(float(want.detach()) * 42, rel=1e-6)
    text = task.format_example((x, y), 0)
    assert "rebuild" in text and "compress" in text


def test_non_causal_config_is_refused():
    with pytest.raises(ValueError, match="causal"):
        CompressionAutoEncoder(ModelConfig(vocab_size=8, dim=16, num_layers=1, num_heads=2, causal=False))


@pytest.mark.parametrize("options, name", [
    ({"seq_len": 1}, "seq_len"),
    ({"vocab_size": 1}, "vocab_size"),
    ({"num_train_examples": -1}, "num_train_examples"),
])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        create_task("compression", **options)
