"""ToMe in the SequenceClassifier (``models/tome.py``) and as the ``tome`` compression method: r = 0 is the plain
classifier bit for bit, the merged forward equals its oracle (loop matching, dense attention) for the exact and
windowed mixers under RoPE, learned and no positions, T − L·r tokens remain, padding never counts, refusals name
their reason, and a compressed checkpoint reloads merged through ``eval``'s loader within a stated tolerance."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import pytest
import torch

from lightformer.cli import main
from lightformer.compress import COMPRESSORS, compress_checkpoint
from lightformer.models.config import ModelConfig
from lightformer.models.heads import LanguageModel, SequenceClassifier
from lightformer.models.tome import merged_forward, token_counts
from lightformer.nn.positions import Rotary
from lightformer.tasks.image import DEFAULT_DIR
from lightformer.train import Trainer
from lightformer.train.checkpoint import load_trained
from lightformer.train.config import build_run_config

MIXER_OPTIONS = {"softmax": {}, "tiled_softmax": {"block_size": 4}, "sliding_window": {"window": 5, "block_size": 4}}


def classifier(mixer="softmax", position="rope", *, pooling="mean", num_layers=3, **changes) -> SequenceClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, dim=16, num_layers=num_layers, num_heads=2, max_len=64, position=position,
                      mixer=mixer, mixer_options=MIXER_OPTIONS.get(mixer, {}), causal=False, dropout=0.0)
    return SequenceClassifier(dataclasses.replace(cfg, **changes), 3, pooling).double().eval()


def batch(t=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 20, (2, t), generator=g)
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, t - 6:] = False
    return idx, mask


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_r_zero_is_the_plain_classifier_bit_for_bit(pooling):
    model = classifier(pooling=pooling)
    idx, mask = batch()
    plain = [model(idx), model(idx, key_padding_mask=mask)]
    model.set_token_merging(0)
    assert model.token_merging == ()
    assert torch.equal(model(idx), plain[0]) and torch.equal(model(idx, key_padding_mask=mask), plain[1])
    for kpm in (None, mask):  # the merging path itself with nothing to merge: the backbone, bit for bit
        hidden, size = merged_forward(model, idx, kpm, (0, 0, 0))
        assert torch.equal(hidden, model.backbone(idx, key_padding_mask=kpm))
        assert torch.equal(size, torch.ones(2, 23, dtype=torch.float64) if kpm is None else mask.double())


@pytest.mark.parametrize("mixer", sorted(MIXER_OPTIONS))
@pytest.mark.parametrize("position", ["rope", "learned", "none"])
def test_merged_forward_equals_its_oracle(mixer, position):
    model = classifier(mixer, position)
    idx, mask = batch()
    for kpm in (None, mask):
        hidden, size = merged_forward(model, idx, kpm, (4, 3, 5))
        ref_hidden, ref_size = merged_forward(model, idx, kpm, (4, 3, 5), oracle=True)
        assert hidden.shape == (2, 23 - 12, 16)  # T - Σ r
        assert torch.equal(size, ref_size)
        real = size > 0
        torch.testing.assert_close(hidden[real], ref_hidden[real], rtol=1e-12, atol=1e-12)
        assert size.sum(1).tolist() == ([23.0, 23.0] if kpm is None else mask.sum(1).double().tolist())


def test_rope_at_per_sequence_positions():
    """``Rotary`` takes ``[B, T]`` floating positions (merged tokens' size-weighted means): integer-valued ones give
    the table's rotation bit for bit, and a fractional position rotates each pair by ``p·θ_i``."""
    rotary = Rotary(4)
    x = torch.randn(2, 3, 50, 4)
    assert torch.equal(rotary(x, torch.arange(50).float().expand(2, -1)), rotary(x, torch.arange(50)))
    one = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])  # channel pair (0, 2) at angle 0
    out = rotary(one, torch.tensor([[2.5]]))
    assert torch.allclose(out[0, 0, 0], torch.tensor([math.cos(2.5), 0.0, math.sin(2.5), 0.0]))


def test_tokens_left_after_l_layers_is_t_minus_l_r():
    model = classifier(num_layers=3)
    idx, _ = batch(t=40)
    seen = []
    for block in model.backbone.blocks:
        block.ffn.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    hidden, size = merged_forward(model, idx, None, (6, 6, 6))
    assert seen == [34, 28, 22] and hidden.shape[1] == 40 - 3 * 6 == size.shape[1]
    assert token_counts((6, 6, 6), 40) == [40, 34, 28, 22]


def test_size_weighted_mean_pooling_and_a_merged_logit():
    model = classifier()
    idx, _ = batch()
    model.set_token_merging(4)
    hidden, size = merged_forward(model, idx, None, model.token_merging)
    pooled = (hidden * size[..., None]).sum(1) / size.sum(1, keepdim=True)
    torch.testing.assert_close(model(idx), model.classifier(pooled).float(), rtol=0, atol=0)
    assert not torch.equal(model(idx), classifier()(idx))  # merging changed something


def test_padding_never_counts():
    """Padding ids, whatever they are, change nothing: they have size 0, are removed first and never merged into a
    real token."""
    model = classifier()
    model.set_token_merging(3)
    idx, mask = batch()
    other = idx.clone()
    other[~mask] = (idx[~mask] + 7) % 20
    torch.testing.assert_close(model(idx, key_padding_mask=mask), model(other, key_padding_mask=mask), rtol=0, atol=0)
    _, size = merged_forward(model, idx, mask, model.token_merging)
    assert size.sum(1).tolist() == [23.0, 17.0]


def test_cls_pooling_protects_the_first_token():
    model = classifier(pooling="cls")
    idx, _ = batch()
    _, size = merged_forward(model, idx, None, (11, 5, 3))  # every A token but the first: 23 -> 12 -> 7 -> 4
    assert (size[:, 0] == 1).all()  # never merged away, never a destination (it is in set A)
    with pytest.raises(ValueError, match="protected first"):
        merged_forward(model, idx, None, (12, 0, 0))


def test_the_merged_forward_trains():
    model = classifier("tiled_softmax").train()
    model.set_token_merging([4, 2, 1])
    idx, mask = batch()
    model(idx, key_padding_mask=mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("build,message", [
    (lambda: LanguageModel(ModelConfig(vocab_size=20, dim=16, num_layers=2, num_heads=2, causal=True)),
     "reads an output at every position"),
    (lambda: classifier(causal=True), "non-causal"),
    (lambda: classifier("linear", "none"), "layer 0's mixer 'linear'"),
    (lambda: classifier(position="alibi"), "position='alibi'"),
    (lambda: classifier(block="parallel"), "block 'parallel' has no such point"),
    (lambda: classifier(value_residual=True), "value_residual"),
])
def test_refusals_name_the_reason(build, message):
    model = build()
    with pytest.raises(ValueError, match=message):
        COMPRESSORS.create("tome", r=2).apply(model, {})
    if isinstance(model, SequenceClassifier):
        with pytest.raises(ValueError, match=message):
            model.set_token_merging(2)


def test_bad_r_is_refused():
    model = classifier(num_layers=2)
    idx, _ = batch(t=9)
    with pytest.raises(ValueError, match="one value per layer"):
        model.set_token_merging([1, 2, 3])
    with pytest.raises(ValueError, match="int >= 0"):
        COMPRESSORS.create("tome", r=-1)
    with pytest.raises(ValueError, match="nothing to exclude"):
        COMPRESSORS.create("tome", r=2, exclude="*.qkv")
    with pytest.raises(ValueError, match="merges nothing"):
        COMPRESSORS.create("tome", r=0).apply(model, {})
    model.set_token_merging(4)  # 9 -> 5 -> at most 3 more (set A of 5 tokens): layer 1 cannot take 4
    with pytest.raises(ValueError, match=r"layer 1 .*r=4 tokens cannot be merged away from 5"):
        model(idx)
    model.set_token_merging([5, 2])  # 9 -> 4 -> 2: fine, and one more layer of 1 would still leave 1 token
    assert model(idx).shape == (2, 3)


def test_merged_model_keeps_the_input_checks():
    model = classifier()
    model.set_token_merging(2)
    idx, mask = batch()
    with pytest.raises(ValueError, match="rank 2"):
        model(idx[0])
    with pytest.raises(ValueError, match="outside"):
        model(idx + 20)
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        model(idx, key_padding_mask=mask[:, :5])


# -- the compression method on a trained checkpoint ------------------------------------------------------------

#: accuracy and loss change allowed for r = 8 of 49 tokens per layer on the 60-step model (measured: accuracy
#: +0.000, loss +0.002); a broken merge (wrong weights, lost sizes) moves the loss by tenths
TOLERANCE = {"accuracy": 0.05, "loss": 0.05}


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A 60-step classifier on Fashion-MNIST downsampled 4x4 (7x7 = 49 tokens), RoPE, softmax (~10 s)."""
    if not pathlib.Path(DEFAULT_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {DEFAULT_DIR} (Debian package dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("image")
    overrides = [("task.name", "image"), ("task.options", {"downsample": 4}), ("train.max_steps", 60),
                 ("train.out_dir", str(out)), ("train.eval_interval", 60), ("train.batch_size", 16),
                 ("train.eval_iters", 4), ("model.dim", 32), ("model.position", "rope"), ("model.mixer", "softmax"),
                 ("model.max_len", 49)]
    torch.manual_seed(0)
    Trainer(build_run_config("tiny", overrides=overrides), log=lambda s: None).fit(progress_bar=False)
    return out


def test_compress_writes_a_checkpoint_that_loads_merged(image_checkpoint, tmp_path):
    result = compress_checkpoint(image_checkpoint, "tome", {"r": 8}, tmp_path / "tome")
    assert result.record == {"r": [8, 8], "tokens": [49, 41, 33]} and result.options == {"exclude": [], "r": 8}
    assert result.details == ["ToMe merges 8, 8 tokens after the mixer of layers 0..1 (16 in all: 49 -> 41 -> 33 "
                              "tokens); weights unchanged"]
    assert result.param_mib_after == result.param_mib_before and result.num_params_after == result.num_params_before
    for key, tol in TOLERANCE.items():
        assert abs(result.metrics_after[key] - result.metrics_before[key]) <= tol
    model, task, _, state = load_trained(result.checkpoint)
    assert state["compression"]["method"] == "tome" and model.token_merging == (8, 8)
    base = load_trained(image_checkpoint)[0]
    assert base.token_merging == ()
    inputs, mask, _ = task.sample("val", 4)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), result.model(inputs), rtol=0, atol=0)  # the saved model, reloaded
        base.set_token_merging(8)
        torch.testing.assert_close(model(inputs), base(inputs), rtol=0, atol=0)  # = merging the original
    assert main(["eval", "--checkpoint", result.checkpoint, "--json"]) == 0


def test_compress_cli_with_a_schedule(image_checkpoint, tmp_path, capsys):
    code = main(["compress", "--checkpoint", str(image_checkpoint), "--method", "tome", "--option", "r=[16, 8]",
                 "--out", str(tmp_path / "sched"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == "tome" and summary["options"]["r"] == [16, 8]
    assert load_trained(tmp_path / "sched")[0].token_merging == (16, 8)


def test_compress_refuses_r_that_leaves_too_few_tokens(image_checkpoint, tmp_path):
    # 49 tokens: layer 0 removes 20 (of at most 25, set A), leaving 29; layer 1 may then remove only 15
    with pytest.raises(ValueError, match=r"layer 1 \(T=49 tokens in, 29 at this layer\): r=20 tokens cannot"):
        compress_checkpoint(image_checkpoint, "tome", {"r": 20}, tmp_path / "too_many")
    assert not (tmp_path / "too_many").exists()


def test_compress_refuses_a_language_model(trained, tmp_path):
    with pytest.raises(ValueError, match="LanguageModel reads an output at every position"):
        compress_checkpoint(trained, "tome", {"r": 2}, tmp_path / "lm")
