"""structured_prune: the shrunk modules equal the original with the removed units' weights zeroed (float64), the
importance scores equal hand computations, parameter counts shrink by what the removed units held, checkpoints
round-trip, decoding still equals the forward, and what cannot be pruned is refused by name."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lightformer.blocks import FFNS
from lightformer.cli import main
from lightformer.compress import COMPRESSORS, compress_checkpoint
from lightformer.compress.base import candidate_layers
from lightformer.compress.structured_prune import (FFN_PRUNABLE, HEAD_PRUNABLE, diagonal_fisher, head_scores,
                                                   kept_units, neuron_scores, shrink_ffn, shrink_heads)
from lightformer.mixers import MIXERS
from lightformer.models import LanguageModel, ModelConfig
from lightformer.train.checkpoint import load_trained, read_state


def build(**kw) -> LanguageModel:
    cfg = dict(vocab_size=40, dim=32, num_layers=2, num_heads=4, max_len=16)
    cfg.update(kw)
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**cfg)).eval()


def prune(model: nn.Module, **options):
    compressor = COMPRESSORS.create("structured_prune", **options)
    return compressor, compressor.apply(model, candidate_layers(model, compressor.config.exclude))


def ids(t: int = 12) -> torch.Tensor:
    return (torch.arange(2 * t).reshape(2, t) * 7).remainder(40)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the shrunk module against a naive masked oracle -------------------------------------------------------------
def masked_ffn(ffn: nn.Module, removed: list[int]) -> nn.Module:
    """The oracle: the original FFN with every weight of the ``removed`` neurons set to zero."""
    oracle = copy.deepcopy(ffn)
    hidden = ffn.fc2.in_features
    with torch.no_grad():
        for j in removed:
            for row in range(j, oracle.fc1.weight.shape[0], hidden):  # each GLU half
                oracle.fc1.weight[row] = 0
                if oracle.fc1.bias is not None:
                    oracle.fc1.bias[row] = 0
            oracle.fc2.weight[:, j] = 0
    return oracle


def masked_heads(mixer: nn.Module, removed: list[int]) -> nn.Module:
    """The oracle: the original mixer with the ``removed`` heads' q, k, v rows (and biases) and out columns zero."""
    oracle = copy.deepcopy(mixer)
    h, d = mixer.config.num_heads, mixer.config.head_dim
    with torch.no_grad():
        for head in removed:
            for part in range(3):
                rows = slice(part * h * d + head * d, part * h * d + (head + 1) * d)
                oracle.qkv.weight[rows] = 0
                if oracle.qkv.bias is not None:
                    oracle.qkv.bias[rows] = 0
            oracle.out.weight[:, head * d:(head + 1) * d] = 0
    return oracle


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", FFN_PRUNABLE)
def test_pruned_ffn_equals_the_masked_oracle(name, bias):
    torch.manual_seed(1)
    ffn = FFNS.create(name, dim=16, hidden=12, bias=bias).double()
    with torch.no_grad():
        for p in ffn.parameters():  # biases start at zero otherwise, which would hide a bias-slicing mistake
            p.normal_(0.0, 0.5)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    kept = [0, 2, 3, 7, 11]
    pruned = shrink_ffn(ffn, kept)
    assert pruned.fc2.in_features == 5 and pruned.config.hidden == 5 and type(pruned) is type(ffn)
    oracle = masked_ffn(ffn, [j for j in range(12) if j not in kept])
    torch.testing.assert_close(pruned(x), oracle(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ffn(x), oracle(x))  # the removed neurons did contribute


def head_cases():
    for name in HEAD_PRUNABLE:
        cls = MIXERS.get(name)
        for position in sorted(cls.capabilities.positions):
            yield pytest.param(name, position, id=f"{name}-{position}")


@pytest.mark.parametrize("name, position", list(head_cases()))
def test_pruned_heads_equal_the_masked_oracle(name, position):
    cls = MIXERS.get(name)
    causal = cls.capabilities.causal
    torch.manual_seed(2)
    mixer = MIXERS.create(name, dim=32, num_heads=4, causal=causal, position=position, bias=True,
                          **cls.example_options).double().eval()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    for kept in ([0, 2, 3], [3]):
        pruned = shrink_heads(mixer, kept)
        assert pruned.config.num_heads == len(kept) and pruned.config.head_dim == 8
        assert pruned.qkv.weight.shape == (3 * 8 * len(kept), 32) and pruned.out.weight.shape == (32, 8 * len(kept))
        oracle = masked_heads(mixer, [h for h in range(4) if h not in kept])
        torch.testing.assert_close(pruned(x), oracle(x), rtol=1e-10, atol=1e-10)
        if position == "alibi":
            assert torch.equal(pruned.alibi_slopes, mixer.alibi_slopes[kept])


def test_removing_zero_neurons_and_heads_leaves_outputs_unchanged_exactly():
    """Every value here is a small dyadic rational (FFN: ReLU gate of quarter-integers; attention: q = 0, so four
    bidirectional keys get weight 1/4 each), so each sum is exact in float64 in any order and the comparison is
    bit for bit."""
    gen = torch.Generator().manual_seed(3)
    quarters = lambda *shape: torch.randint(-4, 5, shape, generator=gen).double() / 4  # noqa: E731
    ffn = FFNS.create("reglu", dim=4, hidden=4).double()
    with torch.no_grad():
        ffn.fc1.weight.copy_(quarters(8, 4))
        ffn.fc2.weight.copy_(quarters(4, 4))
        ffn.fc1.weight[[3, 7]] = 0  # neuron 3: gate and value rows
        ffn.fc2.weight[:, 3] = 0
    x = quarters(2, 5, 4)
    kept = kept_units(neuron_scores(ffn, "magnitude"), 0.25)
    assert kept == [0, 1, 2]
    assert torch.equal(shrink_ffn(ffn, kept)(x), ffn(x))

    mixer = MIXERS.create("softmax", dim=8, num_heads=2, causal=False).double()
    with torch.no_grad():
        mixer.qkv.weight.copy_(quarters(24, 8))
        mixer.qkv.weight[:8] = 0  # q = 0 for both heads: uniform attention
        mixer.qkv.weight[[*range(12, 16), *range(20, 24)]] = 0  # head 1's k and v rows
        mixer.out.weight.copy_(quarters(8, 8))
        mixer.out.weight[:, 4:] = 0  # head 1's out columns
    x = quarters(2, 4, 8)
    kept = kept_units(head_scores(mixer, "magnitude"), 0.5)
    assert kept == [0]
    assert torch.equal(shrink_heads(mixer, kept)(x), mixer(x))


def test_zero_sparsity_is_the_identity():
    model = build(ffn="swiglu", position="rope")
    before = {n: m for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(ids())[0]
    for options in (dict(ffn_sparsity=0.0, head_sparsity=0.0), dict(ffn_sparsity=0.005, head_sparsity=0.2)):
        _, record = prune(model, **options)  # 0.005·85 and 0.2·4 both floor to 0 units
        assert dict(model.named_modules()) == before
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert torch.equal(model(ids())[0], reference)
        assert all(len(v["kept"]) == v["of"] for part in ("ffn", "heads") for v in record[part].values())
    assert COMPRESSORS.create("structured_prune", ffn_sparsity=0.0).describe(
        {"ffn": {}, "heads": {}, "excluded": []}) == ["nothing pruned (ffn_sparsity = head_sparsity = 0)"]


# -- importance --------------------------------------------------------------------------------------------------
def test_fisher_importance_equals_a_hand_computation():
    """ReGLU with D = 1, two neurons, positive weights and inputs: out(x) = x² Σ_j a_j g_j v_j, so with L_n = out(x_n)
    ∂L/∂g_j = a_j v_j x², ∂L/∂v_j = a_j g_j x², ∂L/∂a_j = g_j v_j x². Over x ∈ {1, 2}, mean x⁴ = 8.5, F = 8.5·(the
    other two)², and the saliency ½ Σ F w² = ½·8.5·3·(a_j g_j v_j)² = 12.75·(a_j g_j v_j)²."""
    ffn = FFNS.create("reglu", dim=1, hidden=2).double()
    g, v, a = [1.0, 2.0], [3.0, 0.5], [0.5, -1.0]
    with torch.no_grad():
        ffn.fc1.weight.copy_(torch.tensor([g + v]).T)  # [gate; value] rows
        ffn.fc2.weight.copy_(torch.tensor([a]))
    batches = [torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)]
    fisher = diagonal_fisher(ffn, batches, lambda m, x: m(x).sum(), dict(ffn.named_parameters()))
    expected_fc1 = 8.5 * torch.tensor([[0.5 * 3.0], [-1.0 * 0.5], [0.5 * 1.0], [-1.0 * 2.0]]) ** 2
    torch.testing.assert_close(fisher["fc1.weight"], expected_fc1.double(), rtol=1e-14, atol=0)
    torch.testing.assert_close(fisher["fc2.weight"], 8.5 * torch.tensor([[3.0, 1.0]], dtype=torch.float64) ** 2,
                               rtol=1e-14, atol=0)
    scores = neuron_scores(ffn, "fisher", fisher)
    torch.testing.assert_close(scores, torch.tensor([12.75 * 1.5 ** 2, 12.75 * 1.0 ** 2], dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert kept_units(scores, 0.5) == [0]
    # magnitude ranks them the other way: ‖(1, 3)‖·0.5 = 1.58 < ‖(2, 0.5)‖·1 = 2.06
    magnitude = neuron_scores(ffn, "magnitude")
    torch.testing.assert_close(magnitude, torch.tensor([10 ** 0.5 * 0.5, 4.25 ** 0.5], dtype=torch.float64))
    assert kept_units(magnitude, 0.5) == [1]


def test_head_scores_equal_a_loop_over_each_heads_weights():
    torch.manual_seed(4)
    mixer = MIXERS.create("softmax", dim=12, num_heads=3, bias=True).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_()
    fisher = {n: torch.rand_like(p) for n, p in mixer.named_parameters()}
    h, d = 3, 4
    for head in range(h):
        rows = [part * h * d + head * d + i for part in range(3) for i in range(d)]
        cols = [head * d + i for i in range(d)]
        w_in, w_out = mixer.qkv.weight[rows], mixer.out.weight[:, cols]
        magnitude = w_in.norm() * w_out.norm()
        saliency = 0.5 * ((fisher["qkv.weight"][rows] * w_in ** 2).sum()
                          + (fisher["out.weight"][:, cols] * w_out ** 2).sum()
                          + (fisher["qkv.bias"][rows] * mixer.qkv.bias[rows] ** 2).sum())
        torch.testing.assert_close(head_scores(mixer, "magnitude")[head], magnitude.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(head_scores(mixer, "fisher", fisher)[head], saliency.detach(), rtol=1e-12, atol=0)


def test_kept_units_removes_the_floor_of_the_fraction_lowest_first():
    scores = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])
    assert kept_units(scores, 0.4) == [0, 2, 4]  # two go: the tied 1.0s, lower index first
    assert kept_units(scores, 0.5) == [0, 2, 4]  # floor(2.5) = 2
    assert kept_units(scores, 0.6) == [0, 4]
    assert len(kept_units(torch.zeros(100), 0.29)) == 71  # 0.29·100 = 28.999... in floating point


# -- whole models ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(ffn="mlp", position="rope"), dict(ffn="swiglu", position="t5"),
                                dict(block="macaron", ffn="geglu", position="alibi")])
def test_parameter_count_shrinks_by_what_the_removed_units_held(kw):
    model = build(**kw)
    before = count(model)
    _, record = prune(model, ffn_sparsity=0.5, head_sparsity=0.5)
    glu = kw["ffn"] != "mlp"
    removed = 0
    for name, info in record["ffn"].items():
        gone = info["of"] - len(info["kept"])
        per_neuron = (3 if glu else 2) * 32 + (0 if glu else 1)  # fc1 row(s), fc2 column, fc1 bias (mlp only)
        removed += gone * per_neuron
        assert gone == info["of"] // 2
    for info in record["heads"].values():
        assert len(info["kept"]) == 2
        removed += 2 * 8 * (3 * 32 + 32)  # q, k, v rows and out columns of 2 heads of width 8
    if kw["position"] == "t5":
        # the tied [32, 4] table becomes one [32, 2] table per layer: as many values as before
        assert model.backbone.blocks[0].mixer.rel_bias is not model.backbone.blocks[1].mixer.rel_bias
    assert before - count(model) == removed
    assert len(record["ffn"]) == (4 if kw.get("block") == "macaron" else 2)


@pytest.mark.parametrize("kw", [dict(mixer="softmax", position="rope"), dict(mixer="sliding_window", position="alibi",
                                mixer_options={"window": 5}), dict(mixer="performer", position="none",
                                mixer_options={"num_features": 16}), dict(mixer="softmax", position="t5")])
def test_decoding_a_pruned_lm_equals_its_forward(kw):
    model = build(ffn="swiglu", **kw)
    prune(model, ffn_sparsity=0.5, head_sparsity=0.5)
    assert model.backbone.blocks[0].mixer.config.num_heads == 2
    x = ids()
    with torch.no_grad():
        logits = model(x)[0]
        prefill, state = model.prefill(x[:, :7])
        steps = []
        for t in range(7, x.shape[1]):
            out, state = model.step(x[:, t], state)
            steps.append(out)
    torch.testing.assert_close(prefill, logits[:, :7], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), logits[:, 7:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(position="alibi"), dict(position="t5", ffn="swiglu"),
                                dict(mixer="performer", position="none", mixer_options={"num_features": 16})])
def test_restore_rebuilds_the_pruned_structure_in_a_fresh_model(kw):
    model = build(**kw)
    compressor, record = prune(model, ffn_sparsity=0.5, head_sparsity=0.5)
    record = json.loads(json.dumps(record))  # what the checkpoint keeps
    fresh = build(**kw)
    compressor.restore(fresh, record)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(ids())[0], model(ids())[0])
    for a, b in zip(model.backbone.blocks, fresh.backbone.blocks):
        assert a.mixer.config == b.mixer.config and a.ffn.config == b.ffn.config
        if a.mixer.alibi_slopes is not None:  # not in the state dict: rebuilt from the kept heads
            assert torch.equal(a.mixer.alibi_slopes, b.mixer.alibi_slopes)
    full = record["ffn"]["backbone.blocks.0.ffn"]["of"]
    with pytest.raises(ValueError, match=f"blocks.0.ffn has {full // 2} neurons, the record {full}; the checkpoint"):
        compressor.restore(fresh, record)  # already restored: the widths no longer match the record's


# -- refusals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, option, match", [
    (dict(ffn="moe"), "ffn_sparsity", "FFN neurons of backbone.blocks.0.ffn \\('moe'\\): its neurons live in E expert"),
    (dict(ffn="matformer"), "ffn_sparsity", "\\('matformer'\\): its nested sub-FFNs.*extract_submodel"),
    (dict(ffn="polynorm"), "ffn_sparsity", "\\('polynorm'\\): its activation RMS-normalises"),
    (dict(mixer="hilo", mixer_options={"window": 4}), "head_sparsity", "\\('hilo'\\): it splits its heads"),
    (dict(mixer="aft_simple", position="none"), "head_sparsity", "\\('aft_simple'\\): AFT has no attention heads"),
    (dict(mixer="mamba", position="none"), "head_sparsity", "\\('mamba'\\): it is not multi-head attention"),
    (dict(mixer="persistent_memory", mixer_options={"num_memory": 4}), "head_sparsity",
     "\\('persistent_memory'\\): it holds per-head parameters beside qkv and out \\(memory_keys, memory_values\\)"),
    (dict(mixer="linear_relu", position="none"), "head_sparsity",
     "\\('linear_relu'\\): it holds per-head parameters beside qkv and out \\(conv_weight\\)"),
    (dict(mixer_options={"num_kv_heads": 2}), "head_sparsity", "num_kv_heads=2 < num_heads=4 \\(grouped/multi-query"),
    (dict(block="sub_ln"), "ffn_sparsity", "block 'sub_ln' normalises the input of the output projection"),
    (dict(block="sub_ln"), "head_sparsity", "block 'sub_ln' normalises"),
    (dict(value_residual=True), "head_sparsity", "value_residual mixes each layer's values with layer 0's"),
])
def test_what_cannot_be_pruned_is_refused_by_name_and_left_unchanged(kw, option, match):
    model = build(**kw)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"ffn_sparsity": 0.0, "head_sparsity": 0.0, option: 0.5}
    with pytest.raises(ValueError, match=match) as err:
        prune(model, **options)
    assert "exclude='backbone.blocks.0." in str(err.value)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # the way out the message names: leave that kind of layer as it is
    part = "ffn" if option == "ffn_sparsity" else "mixer"
    _, record = prune(model, exclude=f"*.{part}*", **options)
    assert record[{"ffn": "ffn", "mixer": "heads"}[part]] == {} and len(record["excluded"]) == 2


def test_value_residual_still_allows_ffn_pruning():
    model = build(value_residual=True)
    _, record = prune(model, ffn_sparsity=0.5)
    assert [len(v["kept"]) for v in record["ffn"].values()] == [64, 64]
    assert torch.isfinite(model(ids())[0]).all()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="ffn_sparsity must be a fraction in \\[0, 1\\), got 1.0; 1.0 would remove "
                                         "every neuron of a layer \\(a layer keeps at least one\\)"):
        COMPRESSORS.create("structured_prune", ffn_sparsity=1.0)
    with pytest.raises(ValueError, match="head_sparsity must be a fraction.*every head"):
        COMPRESSORS.create("structured_prune", head_sparsity=1)
    with pytest.raises(ValueError, match="head_sparsity must be a fraction in \\[0, 1\\), got -0.1$"):
        COMPRESSORS.create("structured_prune", head_sparsity=-0.1)
    with pytest.raises(ValueError, match="importance must be one of \\('magnitude', 'fisher'\\), got 'taylor'"):
        COMPRESSORS.create("structured_prune", importance="taylor")
    with pytest.raises(ValueError, match="fisher_batches must be an int >= 1, got 0"):
        COMPRESSORS.create("structured_prune", fisher_batches=0)
    with pytest.raises(ValueError, match="finetune_steps must be an int >= 0"):
        COMPRESSORS.create("structured_prune", finetune_steps=-1)
    with pytest.raises(ValueError, match="importance='fisher' needs gradients.*estimate_fisher"):
        prune(build(), importance="fisher")


def test_head_dim_option_keeps_the_default_layout_and_refuses_bad_values():
    default = MIXERS.create("softmax", dim=32, num_heads=4)
    explicit = MIXERS.create("softmax", dim=32, num_heads=4, head_dim=8)
    assert default.config == explicit.config and default.config.head_dim == 8
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert default.qkv.weight.shape == (96, 32) and default.out.weight.shape == (32, 32)
    narrow = MIXERS.create("softmax", dim=32, num_heads=3, head_dim=8)
    assert narrow.qkv.weight.shape == (72, 32) and narrow.out.weight.shape == (32, 24)
    with pytest.raises(ValueError, match="dim=32 must be divisible by num_heads=3"):
        MIXERS.create("softmax", dim=32, num_heads=3)
    for bad in (0, -8, True, 2.0):
        with pytest.raises(ValueError, match="head_dim must be a positive int or None"):
            MIXERS.create("softmax", dim=32, num_heads=4, head_dim=bad)


# -- the pipeline: Fisher from training batches, fine-tune, checkpoint ---------------------------------------------
def test_compress_checkpoint_round_trips_and_loads_in_eval_and_sample(trained, tmp_path, capsys):
    options = {"ffn_sparsity": 0.5, "head_sparsity": 0.5, "importance": "fisher", "fisher_batches": 2,
               "finetune_steps": 3}
    result = compress_checkpoint(trained, "structured_prune", options, tmp_path)
    state = read_state(result.checkpoint)
    assert state["compression"]["method"] == "structured_prune" and state["compression"]["options"]["importance"] \
        == "fisher"
    assert result.finetune["steps"] == 3
    layers = result.model.backbone.blocks
    assert [b.ffn.fc2.in_features for b in layers] == [128, 128]  # tiny preset at dim 64: hidden 256
    assert [b.mixer.config.num_heads for b in layers] == [1, 1]  # of 2
    # dim 64: a neuron holds 64 + 1 + 64 values, a head 3·32·64 + 32·64
    assert result.num_params_before - result.num_params_after == 2 * (128 * 129 + 4 * 32 * 64)
    assert result.file_mib_after < result.file_mib_before
    loaded = load_trained(result.checkpoint)[0]
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], result.model(x)[0])
    assert main(["eval", "--checkpoint", result.checkpoint, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["val_loss"] == pytest.approx(result.metrics_after["loss"], abs=1e-6)
    assert main(["sample", "--checkpoint", result.checkpoint, "--max-new-tokens", "8", "--prompt", "def "]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert any(line.startswith("removed 256 of 512 FFN neurons") and "importance fisher" in line
               for line in result.details)


def test_fisher_in_the_pipeline_uses_training_batches_and_ranks_by_saliency(trained, tmp_path):
    """The pipeline's Fisher is ``diagonal_fisher`` over the task's training batches: recomputed here from the same
    draws, it gives the kept units the pipeline recorded."""
    from lightformer.tasks.base import batch_to
    from lightformer.train.trainer import STREAM

    options = {"ffn_sparsity": 0.25, "head_sparsity": 0.0, "importance": "fisher", "fisher_batches": 2}
    result = compress_checkpoint(trained, "structured_prune", options, tmp_path)
    model, task, run_config, _ = load_trained(trained)
    tc = run_config.train
    batches = [batch_to(task.sample("train", tc.batch_size, seed=(tc.seed + 2) * STREAM + n), "cpu")
               for n in range(2)]
    params = {n: p for n, p in model.named_parameters() if n.startswith("backbone.blocks.0.ffn.")}
    fisher = diagonal_fisher(model, batches, lambda m, b: task.loss(m, b).loss, params)
    fisher = {k.removeprefix("backbone.blocks.0.ffn."): v for k, v in fisher.items()}
    kept = kept_units(neuron_scores(model.backbone.blocks[0].ffn, "fisher", fisher), 0.25)
    assert result.record["ffn"]["backbone.blocks.0.ffn"]["kept"] == kept
    magnitude = kept_units(neuron_scores(model.backbone.blocks[0].ffn, "magnitude"), 0.25)
    assert kept != magnitude
