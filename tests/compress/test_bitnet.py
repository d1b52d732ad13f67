"""BitNet b1.58 end to end: the model option ``linear="bitlinear"`` (which layers it takes, which it refuses, Muon's
groups, config round trips), a tiny model that learns, and the ``bitnet`` export of packed 2-bit weights whose CPU
path equals the training-time layer and whose checkpoint the ordinary loaders read."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from lightformer.cli import main
from lightformer.compress import COMPRESSORS, Finetune, PackedBitLinear, compress_checkpoint
from lightformer.compress.base import candidate_layers, parameter_bytes
from lightformer.models import LanguageModel, ModelConfig, SequenceClassifier
from lightformer.nn.bitlinear import BitLinear, absmean_ternary, pack_ternary, unpack_ternary
from lightformer.train import Trainer
from lightformer.train.checkpoint import load_trained, read_state
from lightformer.train.config import TrainConfig, build_run_config
from lightformer.train.optim import build_optimizer


def build(**kw) -> LanguageModel:
    cfg = dict(vocab_size=40, dim=32, num_layers=2, num_heads=2, max_len=16, linear="bitlinear")
    cfg.update(kw)
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**cfg))


# --- the model option -------------------------------------------------------------------------------------------

def test_the_option_round_trips_through_dicts_cli_and_toml(tmp_path):
    config = ModelConfig(linear="bitlinear")
    assert ModelConfig.from_dict(config.to_dict()) == config and config.to_dict()["linear"] == "bitlinear"
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "linear"}  # a checkpoint from before the option
    assert ModelConfig.from_dict(old).linear == "linear"
    assert build_run_config("tiny", overrides=[("model.linear", "bitlinear")]).model.linear == "bitlinear"
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nlinear = "bitlinear"\n')
    assert build_run_config("tiny", toml_path=str(toml)).model.linear == "bitlinear"
    with pytest.raises(ValueError, match="linear must be one of \\('linear', 'bitlinear'\\), got 'ternary'"):
        ModelConfig(linear="ternary")


def test_bitlinear_takes_every_block_linear_and_only_those():
    model = build()
    layers = candidate_layers(model)
    assert len(layers) == 8 and all(type(m) is BitLinear for m in layers.values())  # qkv, out, fc1, fc2 per layer
    assert type(model.head) is nn.Linear and model.head.weight is model.backbone.embed.weight  # float, tied
    classifier = SequenceClassifier.bidirectional(ModelConfig(vocab_size=40, dim=32, num_layers=2, num_heads=2,
                                                              max_len=16, linear="bitlinear"), num_classes=3)
    assert type(classifier.classifier) is nn.Linear
    assert all(type(m) is BitLinear for m in candidate_layers(classifier).values())


def test_bitlinear_changes_neither_the_init_nor_the_rng_stream():
    """Same seed, same parameters as the nn.Linear model (BitLinear is built around the layers' own parameters), and
    the construction-time probe leaves the RNG where the plain model's construction leaves it."""
    plain, bit = build(linear="linear"), build()
    after_plain = (build(linear="linear"), torch.rand(4))[1]
    after_bit = (build(), torch.rand(4))[1]
    assert torch.equal(after_plain, after_bit)
    assert plain.state_dict().keys() == bit.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, bit.state_dict()[key]), key


@pytest.mark.parametrize("kw, layer", [
    (dict(mixer="mamba", position="none"), "blocks.0.mixer.dt_proj (layer 0's mixer 'mamba')"),
    (dict(mixer="lmu", position="none"), "blocks.0.mixer.W_h (layer 0's mixer 'lmu')"),
    (dict(ffn="matformer"), "blocks.0.ffn.fc1 (layer 0's FFN 'matformer')"),
    (dict(ffn="moe"), "blocks.0.ffn.router (layer 0's FFN 'moe')"),
])
def test_a_layer_read_directly_is_refused_by_name(kw, layer):
    with pytest.raises(ValueError) as err:
        build(**kw)
    assert layer in str(err.value) and "reads these layers' weights directly" in str(err.value)
    build(linear="linear", **kw)  # the same model with nn.Linear builds


@pytest.mark.parametrize("kw", [dict(block="sub_ln"), dict(value_residual=True)])
def test_hooks_of_the_block_and_model_stay_on_the_bitlinear(kw):
    model = build(**kw)
    qkv, out = model.backbone.blocks[1].mixer.qkv, model.backbone.blocks[1].mixer.out
    assert isinstance(qkv, BitLinear) and isinstance(out, BitLinear)
    hooked = qkv._forward_hooks if "value_residual" in kw else out._forward_pre_hooks
    assert len(hooked) == 1


def test_muon_takes_every_bitlinear_weight():
    """The known trap: a BitLinear that Muon's selection missed would silently train with AdamW."""
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Muon's bf16 emulation warning on CPUs without bf16
        chain = build_optimizer(model, TrainConfig(optimizer="muon"))
    adamw, muon = chain.optimizers
    assert isinstance(muon, torch.optim.Muon)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    bitlinears = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert len(bitlinears) == 8
    for m in bitlinears:
        assert id(m.weight) in in_muon and id(m.weight) not in in_adamw
        if m.bias is not None:
            assert id(m.bias) in in_adamw
    assert in_muon == {id(m.weight) for m in bitlinears}  # and nothing else (embeddings, norms stay AdamW)


def test_a_tiny_bitlinear_model_learns():
    model = build(vocab_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (8, 16), generator=gen)
    targets = idx.roll(-1, dims=1)  # predict the next token of a fixed batch
    losses = []
    for _ in range(40):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(16), abs=0.2)
    assert losses[-1] < losses[0] - 1.0, losses


# --- the packed layer -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(7, 5), (32, 96), (33, 17)])
def test_packed_layer_equals_the_training_bitlinear(bias, shape):
    in_f, out_f = shape
    torch.manual_seed(in_f)
    layer = BitLinear(in_f, out_f, bias=bias).eval()
    packed = PackedBitLinear.from_bitlinear(layer)
    x = torch.randn(2, 9, in_f)
    x[0, 3] = 0.0
    with torch.no_grad():
        assert torch.equal(packed(x), layer(x))  # the integer form of BitLinear, bit for bit
        assert torch.equal(packed(x[0, 1]), layer(x[0, 1]))  # a single token [in]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # runs in float32 even under autocast
            assert torch.equal(packed(x), layer(x))
    torch.testing.assert_close(packed(x), layer(x).detach(), rtol=1e-5, atol=1e-6)  # the straight-through form
    ternary, gamma = absmean_ternary(layer.weight.detach())
    assert torch.equal(packed.ternary_weight(), ternary)
    assert float(packed.weight_scale) == float(gamma)


def test_packed_bytes_are_at_most_an_eighth_of_float32():
    layer = BitLinear(33, 17, bias=True)
    packed = PackedBitLinear.from_bitlinear(layer)
    n = 33 * 17
    assert packed.weight_packed.dtype == torch.uint8 and packed.weight_packed.numel() == math.ceil(n / 4) == 141
    weight_bytes = packed.weight_packed.numel() + packed.weight_scale.numel() * 4
    assert weight_bytes == 145 and weight_bytes <= 4 * n / 8 + 4
    assert parameter_bytes(packed) == 145 + 17 * 4  # + the float bias
    assert not any(p.requires_grad for p in (packed.weight_packed, packed.weight_scale))


def test_the_unpacking_table_equals_the_oracle_on_every_byte():
    packed = PackedBitLinear(32, 32, bias=False)
    packed.weight_packed.data = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(packed.ternary_weight().flatten(), unpack_ternary(packed.weight_packed, 1024).float())
    odd = PackedBitLinear(3, 3, bias=False)  # 9 values: the last byte holds one value and three pads
    values = torch.tensor([[1, -1, 0], [0, 0, 1], [-1, -1, 1]])
    odd.weight_packed.data = pack_ternary(values)
    assert torch.equal(odd.ternary_weight(), values.float())


def test_packed_layer_rejects_a_wrong_width():
    with pytest.raises(ValueError, match="x must be \\[..., in_features=4\\], got shape \\(2, 5\\)"):
        PackedBitLinear(4, 3, bias=False)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="in_features and out_features must be >= 1"):
        PackedBitLinear(0, 3, bias=False)


# --- the export -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_bitlinear(tmp_path_factory, text_file):
    """The conftest's ``trained`` recipe (80 steps, tiny preset, dim 64, byte tokens, T=32) with
    ``linear="bitlinear"``: its checkpoint folder."""
    out = tmp_path_factory.mktemp("bitlinear")
    overrides = [("train.data", str(text_file)), ("train.max_steps", 80), ("train.out_dir", str(out)),
                 ("train.eval_interval", 40), ("model.dim", 64), ("model.linear", "bitlinear")]
    torch.manual_seed(0)
    Trainer(build_run_config("tiny", overrides=overrides), log=lambda s: None).fit(progress_bar=False)
    return out


@pytest.fixture(scope="module")
def exported(trained_bitlinear, tmp_path_factory):
    return compress_checkpoint(trained_bitlinear, "bitnet", {}, tmp_path_factory.mktemp("bitnet"))


def test_the_bitlinear_checkpoint_learned_and_reloads_as_bitlinear(trained_bitlinear):
    model, _, run_config, state = load_trained(trained_bitlinear)
    assert run_config.model.linear == "bitlinear" and state["config"]["model"]["linear"] == "bitlinear"
    assert all(type(m) is BitLinear for m in candidate_layers(model).values())
    assert state["history"][-1]["val_loss"] < 3.3, "80 steps took it well below ln 256 = 5.5 nats/byte"


def test_export_packs_every_layer_and_shrinks_them_16x(exported):
    result = exported
    assert len(result.record["layers"]) == 8
    for name, info in result.record["layers"].items():
        layer = result.model.get_submodule(name)
        assert isinstance(layer, PackedBitLinear)
        assert layer.weight_packed.numel() == math.ceil(info["in"] * info["out"] / 4)
        assert layer.weight_packed.numel() + 4 <= 4 * info["in"] * info["out"] / 8 + 4
        assert 0.0 < info["zeros"] < 1.0 and info["scale"] > 0
    # dim 64: the layers' float32 weights and biases against packed weights, scales and float biases
    assert result.layers_mib_before / result.layers_mib_after > 12
    assert result.file_mib_after < 0.3 * result.file_mib_before  # embeddings and norms stay float
    assert result.val_loss_delta == 0.0  # evaluation (no grad) of the BitLinear model computes what the export does
    assert "packed 4 per byte" in " ".join(result.details)


def test_export_reloads_bit_for_bit_through_load_trained(exported):
    state = read_state(exported.checkpoint)
    assert state["compression"]["method"] == "bitnet" and "optimizer" not in state
    loaded = load_trained(exported.checkpoint)[0]
    for key, value in exported.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    idx = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], exported.model(idx)[0])


def test_the_export_computes_what_the_trained_model_computes(exported, trained_bitlinear):
    trained = load_trained(trained_bitlinear)[0]
    idx = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(load_trained(exported.checkpoint)[0](idx)[0], trained(idx)[0])


def test_the_export_rejects_bad_inputs_like_the_original(exported, trained_bitlinear):
    for model in (load_trained(trained_bitlinear)[0], load_trained(exported.checkpoint)[0]):
        with pytest.raises(ValueError, match="outside"):
            model(torch.tensor([[1, 2, 256]]))
        with pytest.raises(ValueError, match="rank 2"):
            model(torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match="integer token ids"):
            model(torch.zeros(1, 3))


def test_eval_and_sample_load_the_export(exported, capsys):
    assert main(["eval", "--checkpoint", exported.checkpoint, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["val_loss"] == pytest.approx(exported.metrics_after["loss"], abs=1e-6)
    assert main(["sample", "--checkpoint", exported.checkpoint, "--max-new-tokens", "8", "--prompt", "def "]) == 0
    assert capsys.readouterr().out.startswith("def ")


def test_a_float_trained_model_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match="model.linear='linear'.*train the model with --model.linear=bitlinear"):
        compress_checkpoint(trained, "bitnet", {}, tmp_path)


def test_no_finetune_and_not_twice(trained_bitlinear, exported, tmp_path):
    with pytest.raises(ValueError, match="bitnet cannot be fine-tuned"):
        compress_checkpoint(trained_bitlinear, "bitnet", {}, tmp_path / "a", finetune=Finetune(5))
    with pytest.raises(ValueError, match="already compressed \\(bitnet\\)"):
        compress_checkpoint(exported.checkpoint, "bitnet", {}, tmp_path / "b")
    assert "bitnet" in COMPRESSORS.names()
