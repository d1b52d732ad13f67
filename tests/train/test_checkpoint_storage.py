"""How checkpoints store tensors: tied weights once, empty tensors never aliased, tensor subclasses as their plain
inner tensors, and a checkpoint without optimizer state refusing to resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightformer.train import checkpoint


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(0, 3))
        self.b = nn.Parameter(torch.zeros(0, 5))
        self.w = nn.Parameter(torch.randn(4, 4))
        self.view = nn.Parameter(torch.randn(6))


def test_empty_tensors_are_not_taken_for_tied_ones(tmp_path):
    model = Holder()
    checkpoint.save(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), {"step": 0})
    assert checkpoint.read_state(tmp_path)["aliases"] == {}
    other = Holder()
    checkpoint.load_model_weights(tmp_path, other)  # shapes (0, 3) and (0, 5) each load into their own slot
    assert torch.equal(other.w, model.w)


def test_tied_parameters_are_stored_once(tmp_path):
    model = Holder()
    model.view = model.w  # the same parameter under two names (how a head is tied to its embedding)
    checkpoint.save(tmp_path, model, None, {"step": 0})
    assert checkpoint.read_state(tmp_path)["aliases"] == {"view": "w"}
    other = Holder()
    other.view = other.w
    checkpoint.load_model_weights(tmp_path, other)
    assert torch.equal(other.w, model.w) and other.view is other.w


def test_without_optimizer_no_optimizer_file_and_no_resume(tmp_path):
    model = Holder()
    folder = checkpoint.save(tmp_path, model, None, {"step": 3})
    assert not (folder / "optimizer.safetensors").exists()
    with pytest.raises(ValueError, match="holds no optimizer state: it cannot be resumed"):
        checkpoint.restore(tmp_path, Holder(), torch.optim.SGD(Holder().parameters(), lr=0.1))


def test_tensor_subclasses_are_stored_as_their_inner_tensors(tmp_path):
    pytest.importorskip("torchao", reason="the compress extra (torchao)")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    def _quantize(model, names):
        quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
                  filter_fn=lambda m, fqn: fqn in names)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 8))
    _quantize(model, {"0", "1"})
    assert model[0].weight.data_ptr() == model[1].weight.data_ptr() == 0  # why de-duplication by address fails
    checkpoint.save(tmp_path, model, None, {"step": 0})
    state = checkpoint.read_state(tmp_path)
    assert state["aliases"] == {} and set(state["packed"]) == {"0.weight", "1.weight"}
    assert "qdata" in state["packed"]["0.weight"] and "scale" in state["packed"]["0.weight"]
    fresh = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="holds a plain tensor there"):
        checkpoint.load_model_weights(tmp_path, fresh)
    _quantize(fresh, {"0", "1"})
    checkpoint.load_model_weights(tmp_path, fresh)
    for i in (0, 1):
        assert torch.equal(fresh[i].weight.qdata, model[i].weight.qdata)
        assert torch.equal(fresh[i].weight.scale, model[i].weight.scale)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
