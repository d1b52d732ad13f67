"""compress_checkpoint on a tiny trained LM: each method really shrinks what it says, its checkpoint reloads bit for
bit through the ordinary loaders (eval, sample), quality stays within a stated tolerance, and errors name their
cause."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from lightformer.cli import main
from lightformer.compress import COMPRESSORS, Finetune, LowRankLinear, compress_checkpoint
from lightformer.compress.base import candidate_layers, tensor_bytes
from lightformer.train import Trainer
from lightformer.train.checkpoint import load_trained, read_state
from lightformer.train.config import build_run_config

pytest.importorskip("torchao", reason="the quantisation methods need the compress extra (torchao)")

METHODS = {"int8": {}, "int4": {"group_size": 32}, "magnitude_prune": {"amount": 0.3}, "svd": {"energy": 0.7},
           "structured_prune": {"ffn_sparsity": 0.5, "head_sparsity": 0.5, "importance": "fisher",
                                "fisher_batches": 2}}
#: validation-loss change allowed per method (nats/byte) on the 80-step tiny model (measured: int8 1e-4, int4 2e-4,
#: 30 % pruning 1.5e-3, svd at 70 % energy 2.7e-3, half the FFN neurons and heads by a 2-batch Fisher 1.6e-2);
#: generous, but a broken method moves the loss by tenths
TOLERANCE = {"int8": 0.01, "int4": 0.03, "magnitude_prune": 0.05, "svd": 0.05, "structured_prune": 0.05}

_cache: dict[str, object] = {}


@pytest.fixture
def compressed(trained, tmp_path_factory):
    """``compressed(method)``: the CompressResult of ``METHODS[method]`` on the trained model (computed once)."""
    def get(method: str):
        if method not in _cache:
            _cache[method] = compress_checkpoint(trained, method, METHODS[method], tmp_path_factory.mktemp(method))
        return _cache[method]
    return get


def blocks_linears(model: nn.Module) -> dict[str, nn.Module]:
    return candidate_layers(model)


def test_int8_linear_weights_are_about_4x_smaller(compressed):
    from torchao.quantization import Int8Tensor

    result = compressed("int8")
    layers = result.record["layers"]
    assert len(layers) == 8  # qkv, out, fc1, fc2 in each of 2 layers
    for name, info in layers.items():
        w = result.model.get_submodule(name).weight
        assert isinstance(w, Int8Tensor) and w.qdata.dtype == torch.int8 and w.qdata.shape == (info["out"], info["in"])
        # one int8 per value plus, per output row, a float32 scale and an int8 zero point (0: symmetric), against
        # 4 bytes per value
        assert tensor_bytes(w) == info["out"] * info["in"] + (4 + 1) * info["out"]
        assert 4 * info["in"] * info["out"] / tensor_bytes(w) == pytest.approx(4 * info["in"] / (info["in"] + 5))
        assert not w.zero_point.any()
    assert result.layers_mib_before / result.layers_mib_after > 3.5  # biases stay float32
    assert result.param_mib_after < 0.6 * result.param_mib_before  # embeddings and norms stay float
    assert result.file_mib_after < 0.6 * result.file_mib_before
    assert result.num_params_after == result.num_params_before


def test_int4_packs_half_a_byte_per_weight(compressed):
    result = compressed("int4")
    for name, info in result.record["layers"].items():
        w = result.model.get_submodule(name).weight
        groups = info["in"] // 32
        assert tensor_bytes(w) == info["out"] * info["in"] // 2 + groups * info["out"] * 2 * 4  # + scale, zero
    assert result.layers_mib_before / result.layers_mib_after > 4.5


def test_magnitude_prune_reaches_its_sparsity_and_claims_no_size(compressed):
    result = compressed("magnitude_prune")
    loaded = load_trained(result.checkpoint)[0]
    weights = [m.weight for m in blocks_linears(loaded).values()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round(0.3 * total) == result.record["zeros"]
    assert result.record["sparsity"] == pytest.approx(0.3, abs=1e-4)
    # global, not per layer: the layers end with different sparsities
    per_layer = [float((w == 0).float().mean()) for w in weights]
    assert max(per_layer) - min(per_layer) > 0.05
    assert result.file_mib_after == pytest.approx(result.file_mib_before, rel=0.01)  # stored dense
    assert "no speed-up claimed" in " ".join(result.details)


def test_svd_has_fewer_parameters_and_keeps_its_energy(compressed):
    result = compressed("svd")
    assert result.num_params_after < 0.6 * result.num_params_before
    for name, info in result.record["layers"].items():
        layer = result.model.get_submodule(name)
        assert isinstance(layer, LowRankLinear) and layer.rank == info["rank"]
        assert info["rank"] * (info["in"] + info["out"]) < info["in"] * info["out"]
        assert info["energy"] >= 0.7
    loaded = load_trained(result.checkpoint)[0]
    assert sum(p.numel() for p in loaded.parameters()) == result.num_params_after


@pytest.mark.parametrize("method", list(METHODS))
def test_checkpoint_reloads_bit_for_bit(compressed, method):
    result = compressed(method)
    state = read_state(result.checkpoint)
    assert state["compression"]["method"] == method
    assert state["compression"]["options"] == result.options and "optimizer" not in state
    loaded = load_trained(result.checkpoint)[0]
    for key, value in result.model.state_dict().items():
        other = loaded.state_dict()[key]
        assert type(other) is type(value), key
        if is_traceable_wrapper_subclass(value):  # int8/int4: the stored integers and scales themselves
            names, _ = value.__tensor_flatten__()
            for n in names:
                assert torch.equal(getattr(value, n), getattr(other, n)), f"{key}.{n}"
        else:
            assert torch.equal(value, other), key
    idx = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], result.model(idx)[0])


@pytest.mark.parametrize("method", list(METHODS))
def test_validation_loss_stays_within_tolerance(compressed, method):
    result = compressed(method)
    assert result.metrics_before["loss"] < 3.2, "the fixture model learned something (untrained: ln 256 = 5.5)"
    assert abs(result.val_loss_delta) <= TOLERANCE[method]


@pytest.mark.parametrize("method", list(METHODS))
def test_compressed_model_rejects_bad_inputs_like_the_original(compressed, trained, method):
    original = load_trained(trained)[0]
    loaded = load_trained(compressed(method).checkpoint)[0]
    for model in (original, loaded):
        with pytest.raises(ValueError, match="outside"):
            model(torch.tensor([[1, 2, 256]]))
        with pytest.raises(ValueError, match="outside"):
            model(torch.tensor([[-1, 2, 3]]))
        with pytest.raises(ValueError, match="rank 2"):
            model(torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match="integer token ids"):
            model(torch.zeros(1, 3))


@pytest.mark.parametrize("method", list(METHODS))
def test_eval_and_sample_load_the_compressed_checkpoint(compressed, method, capsys):
    result = compressed(method)
    assert main(["eval", "--checkpoint", result.checkpoint, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["val_loss"] == pytest.approx(result.metrics_after["loss"], abs=1e-6)
    assert main(["sample", "--checkpoint", result.checkpoint, "--max-new-tokens", "8", "--prompt", "def "]) == 0
    assert capsys.readouterr().out.startswith("def ")


def test_unknown_method_and_option_are_named(trained, tmp_path):
    with pytest.raises(ValueError, match="unknown compression method 'int3'.*int8"):
        compress_checkpoint(trained, "int3", {}, tmp_path)
    with pytest.raises(TypeError, match="'rank'.*valid options: exclude, energy"):
        compress_checkpoint(trained, "svd", {"rank": 4}, tmp_path)
    with pytest.raises(ValueError, match="energy must be a fraction"):
        compress_checkpoint(trained, "svd", {"energy": 1.5}, tmp_path)
    with pytest.raises(ValueError, match="amount must be a fraction"):
        compress_checkpoint(trained, "magnitude_prune", {"amount": 1}, tmp_path)
    assert main(["compress", "--checkpoint", str(trained), "--method", "int3", "--out", str(tmp_path)]) == 2


def test_refusals_name_their_reason(trained, tmp_path):
    with pytest.raises(ValueError, match="int8 cannot be fine-tuned.*svd"):
        compress_checkpoint(trained, "int8", {}, tmp_path / "a", finetune=Finetune(5))
    with pytest.raises(ValueError, match="holds the source"):
        compress_checkpoint(trained, "int8", {}, trained)
    with pytest.raises(ValueError, match="group_size=128.*exclude"):
        compress_checkpoint(trained, "int4", {"group_size": 128}, tmp_path / "b")  # dim 64 is not a multiple
    with pytest.raises(ValueError, match="no layer would save parameters.*lower energy"):
        compress_checkpoint(trained, "svd", {"energy": 1.0}, tmp_path / "c")
    with pytest.raises(ValueError, match="no nn.Linear layer left"):
        compress_checkpoint(trained, "int8", {"exclude": "*"}, tmp_path / "d")


def test_int4_refuses_with_the_cpu_capability_when_its_kernel_fails(monkeypatch, trained, tmp_path):
    from lightformer.compress import int4

    def broken(*args, **kwargs):
        raise RuntimeError("no int4 kernel")

    monkeypatch.setattr(int4, "_quantize", broken)
    capability = torch.backends.cpu.get_cpu_capability()
    with pytest.raises(ValueError, match=f"does not run on this machine \\(CPU capability {capability}\\).*no int4"):
        compress_checkpoint(trained, "int4", {"group_size": 32}, tmp_path)


def test_a_compressed_checkpoint_is_not_compressed_again_or_resumed(compressed, text_file):
    result = compressed("int8")
    with pytest.raises(ValueError, match="already compressed \\(int8\\)"):
        compress_checkpoint(result.checkpoint, "svd", {}, result.checkpoint + "-again")
    config = build_run_config("tiny", overrides=[("train.data", str(text_file)), ("model.dim", 64)])
    with pytest.raises(ValueError, match="holds no optimizer state"):
        Trainer(config, log=lambda s: None).resume(result.checkpoint)


def test_svd_finetune_recovers_part_of_the_loss(compressed, trained, tmp_path):
    plain = compressed("svd")
    tuned = compress_checkpoint(trained, "svd", {"energy": 0.7, "finetune_steps": 10}, tmp_path)
    assert tuned.finetune["steps"] == 10 and tuned.finetune["lr"] == pytest.approx(1e-4)  # the tiny run's min_lr
    assert tuned.record["layers"].keys() == plain.record["layers"].keys()
    assert tuned.val_loss_delta < plain.val_loss_delta
    loaded = load_trained(tuned.checkpoint)[0]
    idx = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], tuned.model(idx)[0])


def test_cli_prints_sizes_and_loss_change(trained, tmp_path, capsys):
    assert main(["compress", "--checkpoint", str(trained), "--method", "magnitude_prune", "--option", "amount=0.2",
                 "--out", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["method"] == "magnitude_prune" and summary["options"]["amount"] == 0.2
    assert {"param_mib_before", "param_mib_after", "file_mib_before", "file_mib_after", "val_loss_delta"} <= set(summary)
    assert any(line.startswith("parameters") and "MiB" in line for line in out)
    assert any(line.startswith("val loss") for line in out)


def test_registry_lists_the_methods_with_their_papers():
    assert set(COMPRESSORS.names()) >= {"int8", "int4", "magnitude_prune", "svd"}
    for name in COMPRESSORS.names():
        cls = COMPRESSORS.get(name)
        module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__
        assert module_doc and name in module_doc
