"""Per-layer schedules: the syntax, presets, errors, config round trips (dict, TOML, dotted overrides), and
decoding through a mixed stack."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from lightformer import LanguageModel, ModelConfig
from lightformer.models.schedule import SCHEDULE_PRESETS, ScheduleError, resolve_schedule
from lightformer.models.spec import LayerSpec, Options
from lightformer.train.config import build_run_config


def mixers(schedule, layers=8, **kw):
    return [s.mixer for s in ModelConfig(num_layers=layers, schedule=schedule, **kw).layer_specs()]


def test_overrides_and_interleaves():
    assert mixers("sliding_window; softmax@0,6") == ["softmax"] + ["sliding_window"] * 5 + ["softmax", "sliding_window"]
    assert mixers("(mamba2 mamba2 mamba2 softmax)*") == ["mamba2", "mamba2", "mamba2", "softmax"] * 2
    assert mixers("(linear softmax)*", layers=5) == ["linear", "softmax", "linear", "softmax", "linear"]
    assert mixers("softmax@-1", mixer="linear") == ["linear"] * 7 + ["softmax"]
    assert mixers("") == ["softmax"] * 8


def test_parts_set_their_own_field_and_options():
    specs = ModelConfig(num_layers=4, mixer="sliding_window", mixer_options={"window": 16},
                        schedule="softmax/swiglu@1; sliding_window(window=4)/polyrelu(order=2, bias=false)/rmsnorm@2"
                        ).layer_specs()
    assert specs[0] == ModelConfig(num_layers=4, mixer="sliding_window", mixer_options={"window": 16}).default_layer
    assert (specs[1].mixer, specs[1].ffn, dict(specs[1].mixer_options)) == ("softmax", "swiglu", {})
    assert specs[2].mixer_options == {"window": 4}
    assert (specs[2].ffn, specs[2].ffn_options, specs[2].norm) == ("polyrelu", {"order": 2, "bias": False}, "rmsnorm")
    # a bare name equal to the model's choice keeps the model's options
    assert ModelConfig(num_layers=2, mixer="sliding_window", mixer_options={"window": 16},
                       schedule="sliding_window@0").layer_specs()[0].mixer_options == {"window": 16}


def test_toml_literals_in_options():
    spec = resolve_schedule('sliding_window(window=8, bias=true)', LayerSpec(), 1)[0]
    assert spec.mixer_options == {"window": 8, "bias": True}


@pytest.mark.parametrize("schedule,message", [
    ("softmax; linear", "2 base clauses"),
    ("softmax@8", "layer 8 is outside a 8-layer model"),
    ("softmx", "'softmx' is not a registered mixer, block, FFN or norm"),
    ("softmax/linear", "names two mixers"),
    ("(softmax linear)", "expected '\\*'"),
    ("softmax(window=)", "not a TOML literal"),
    ("softmax@", "expected a layer index"),
    ("sliding_window(window=4, window=5)", "given twice"),
])
def test_errors_quote_the_schedule(schedule, message):
    with pytest.raises(ScheduleError, match=message):
        ModelConfig(num_layers=8, schedule=schedule)


def test_unknown_option_inside_a_schedule_is_named():
    with pytest.raises(TypeError, match="'windw'"):
        ModelConfig(num_layers=2, schedule="sliding_window(windw=3)@1")


def test_presets_expand_with_depth():
    assert set(SCHEDULE_PRESETS) == {"masformer", "mamba_hybrid"}
    assert mixers("masformer", layers=4) == ["softmax"] + ["sliding_window"] * 3
    assert mixers("masformer", layers=8) == ["softmax"] * 2 + ["sliding_window"] * 6
    assert mixers("mamba_hybrid", layers=4) == ["mamba2"] * 3 + ["softmax"]
    assert ModelConfig(num_layers=4, schedule="masformer").architecture == "masformer"
    assert ModelConfig(num_layers=4, mixer="linear").architecture == "linear"


def test_config_is_frozen_hashable_and_round_trips():
    cfg = ModelConfig(num_layers=4, mixer="sliding_window", mixer_options={"window": 16}, schedule="softmax@0")
    with pytest.raises(TypeError, match="read-only"):
        cfg.mixer_options["window"] = 999
    assert hash(cfg) == hash(ModelConfig.from_dict(cfg.to_dict()))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert isinstance(cfg.to_dict()["mixer_options"], dict) and not isinstance(cfg.to_dict()["mixer_options"], Options)


def test_old_flat_configs_load():
    old = {"vocab_size": 65, "dim": 32, "num_layers": 2, "num_heads": 2, "mixer": "sliding_window",
           "mixer_options": {"window": 8}, "ffn": "gelu", "ffn_mult": 4.0, "norm": "layernorm",
           "position": "learned", "max_len": 64, "dropout": 0.0, "tie_weights": True, "causal": True}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.block, cfg.ffn, cfg.schedule) == ("pre_norm", "mlp", "")
    assert ModelConfig.from_dict({**old, "ffn": "swiglu"}).ffn_hidden == 88  # 2/3 of 128, a multiple of 8


def test_schedule_from_toml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nnum_layers = 4\nmixer = "sliding_window"\nschedule = "softmax@0"\n'
                    '[model.mixer_options]\nwindow = 8\n')
    cfg = build_run_config(toml_path=str(path)).model
    assert cfg.mixers == ("softmax", "sliding_window", "sliding_window", "sliding_window")
    cfg = build_run_config(preset="tiny", overrides=[("model.schedule", "(linear softmax)*"),
                                                      ("model.num_layers", 4)]).model
    assert cfg.mixers == ("linear", "softmax", "linear", "softmax")


def test_decode_through_a_mixed_stack_equals_forward():
    cfg = ModelConfig(vocab_size=31, dim=16, num_layers=4, num_heads=2, position="none", max_len=64,
                      schedule="mamba/swiglu; softmax@1; linear/post_norm@2; sliding_window(window=4)/rmsnorm@3")
    torch.manual_seed(0)
    m = LanguageModel(cfg).double().eval()
    x = torch.randint(0, 31, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m.backbone(x)
        head, state = m.backbone.prefill(x[:, :5])
        rows = [head]
        for t in range(5, 17):
            h, state = m.backbone.step(x[:, t], state)
            rows.append(h[:, None])
    torch.testing.assert_close(torch.cat(rows, 1), full, rtol=1e-9, atol=1e-9)
    assert [type(b.mixer).registry_name for b in m.backbone.blocks] == ["mamba", "softmax", "linear", "sliding_window"]
