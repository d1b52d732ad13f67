"""Schedule presets beside single mixers in ``suite``, ``compare`` and ``advise``; labelled suite runs; the learning
curves of the leaderboard; diverged runs.

Training is kept as tiny as in ``test_suite.py`` (MQAR at T=32 with 4 pairs, 3 steps of batch 16, one thread).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from lightformer.bench import suite as suite_mod
from lightformer.bench.advise import advise
from lightformer.bench.capacity import CapacityCell, capacity_key, run
from lightformer.bench.cli import parse_model_overrides
from lightformer.bench.compare import run_compare
from lightformer.bench.leaderboard import entries, write_leaderboard
from lightformer.bench.results import capacity_record, load_records
from lightformer.bench.state_size import model_state_size, state_size
from lightformer.bench.suite import build_cells, run_suite, unsupported_reason
from lightformer.models.architecture import architecture_capabilities, base_mixer
from lightformer.models.config import ModelConfig
from lightformer.tasks import TASKS
from lightformer.tasks.base import encoder_causal

MQAR = {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 32}
LRS = [1e-3, 3e-2]
STEPS = 3
BATCH = 16
MACHINE = {"cpu": "TestCPU 9000", "torch": "9.9.9", "python": "3.11.0", "git_commit": "abc1234",
           "timestamp": "2026-01-02T03:04:05+00:00"}


def cells(mixers, seeds=(0,), **kw) -> list[CapacityCell]:
    built = build_cells(["mqar"], mixers, list(seeds), budget_s=None, max_steps=STEPS, lrs=LRS, eval_n=32, threads=1,
                        task_options={"mqar": MQAR}, **kw)
    return [dataclasses.replace(c, train={**c.train, "batch_size": BATCH, "bf16": False, "warmup_steps": 1})
            for c in built]


# -- presets in the cells -----------------------------------------------------------------------------------------

def test_preset_cells_size_the_base_mixer_and_judge_every_layer():
    sw, mas, hyb = cells(["sliding_window", "masformer", "mamba_hybrid"])
    assert base_mixer("masformer") == "sliding_window" and base_mixer("mamba_hybrid") == "mamba2"
    # masformer's sliding layers get the window sliding_window gets (T/4), through mixer_options
    assert mas.mixer == "masformer" and mas.mixer_options == sw.mixer_options == {"window": 8}
    assert mas.model == sw.model and mas.model["position"] == "rope"  # both layers' mixers take RoPE
    assert hyb.model["position"] == "learned" and "rope" not in architecture_capabilities("mamba_hybrid").positions
    assert len({c.key for c in (sw, mas, hyb)}) == 3
    # the probe recipe's two layers: one exact layer (the bottom quarter, at least one) and one sliding layer
    cfg = mas.model_config()
    assert cfg.schedule == "masformer" and cfg.architecture == "masformer"
    assert [(s.mixer, dict(s.mixer_options)) for s in cfg.layer_specs()] == [("softmax", {}),
                                                                             ("sliding_window", {"window": 8})]
    assert mas.layer_mixers() == ["softmax", "sliding_window"]
    assert hyb.layer_mixers() == ["mamba2", "mamba2"]  # (mamba2 mamba2 mamba2 softmax)* cut at two layers
    deep, = cells(["mamba_hybrid"], model_overrides={"num_layers": 4})
    assert deep.layer_mixers() == ["mamba2", "mamba2", "mamba2", "softmax"]
    assert all(unsupported_reason(c) is None for c in (sw, mas, hyb))


def test_option_overrides_reach_a_preset_through_its_base_mixer():
    mas, = cells(["masformer"], mixer_options={"sliding_window": {"window": 4}})
    assert mas.mixer_options == {"window": 4}  # sliding_window's options are masformer's base layers' too
    mas, = cells(["masformer"], mixer_options={"sliding_window": {"window": 4}, "masformer": {"window": 2}})
    assert mas.mixer_options == {"window": 2}  # the preset's own win


def test_capabilities_of_a_schedule_come_from_its_layers():
    # a schedule given as a model field: the causal task needs every layer causal
    lin, = cells(["softmax"], model_overrides={"schedule": "linformer@1"})
    assert lin.layer_mixers() == ["softmax", "linformer"]
    assert unsupported_reason(lin) == "softmax cannot be causal (its linformer layers) and task mqar is causal"
    # a classifier encodes causally as soon as one layer is causal-only (mamba2), bidirectionally otherwise
    assert encoder_causal(ModelConfig(num_layers=4, mixer="mamba2", schedule="mamba_hybrid"))
    assert not encoder_causal(ModelConfig(num_layers=4, mixer="sliding_window", schedule="masformer"))
    assert not encoder_causal(ModelConfig(num_layers=4))


@pytest.mark.parametrize("kw, match", [
    (dict(mixers=["masformer"], model_overrides={"schedule": "softmax@0"}), "both set the layers"),
    (dict(mixers=["softmax"], model_overrides={"mixer": "linear"}), "may not set mixer or mixer_options"),
    (dict(mixers=["softmax"], model_overrides={"blok": "post_norm"}), r"model field\(s\) \['blok'\] unknown"),
    (dict(mixers=["hybrid_of_nothing"]), "unknown mixer 'hybrid_of_nothing'"),
])
def test_bad_preset_and_model_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        build_cells(["mqar"], budget_s=1.0, seeds=[0], **kw)


def test_model_overrides_grammar():
    assert parse_model_overrides(["dim=32", "block=deepnorm", "ffn=moe", "ffn_options.num_experts=4",
                                  "ffn_options.top_k=1", "value_residual=true", "schedule=softmax@0; linear",
                                  'norm_options={"eps": 1e-3}']) == {
        "dim": 32, "block": "deepnorm", "ffn": "moe", "ffn_options": {"num_experts": 4, "top_k": 1},
        "value_residual": True, "schedule": "softmax@0; linear", "norm_options": {"eps": 1e-3}}
    for bad in (["dim"], ["=3"], ["mixer_options.window=3"], ["dim.x=3"]):
        with pytest.raises(ValueError, match="--model"):
            parse_model_overrides(bad)
    # every override is a ModelConfig field the cells carry into the model
    ffn, = cells(["softmax"], model_overrides=parse_model_overrides(["ffn=moe", "ffn_options.num_experts=4",
                                                                     "block=post_norm"]))
    cfg = ffn.model_config()
    assert (cfg.ffn, dict(cfg.ffn_options), cfg.block) == ("moe", {"num_experts": 4}, "post_norm")


# -- a preset measured: subprocess sweep ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preset_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("presets") / "capacity.jsonl"
    cell, = cells(["masformer"])
    return {"cell": cell, "records": run_suite([cell], out, progress=False), "out": out}


def test_preset_record_names_the_architecture_and_its_layers(preset_sweep):
    cell, (rec,) = preset_sweep["cell"], preset_sweep["records"]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["mixer"] == "masformer" and rec["schedule"] == ["softmax", "sliding_window"]
    assert rec["mixer_options"] == {"window": 8} and rec["label"] is None
    assert json.loads(capacity_key(rec)) == json.loads(cell.key) and "label" not in json.loads(cell.key)
    assert load_records(preset_sweep["out"]) == [rec]
    # state: the exact layer's KV cache 2·T·D plus the sliding layer's window 2·w·D; per layer the mean
    D, H = cell.model["dim"], cell.model["num_heads"]
    total = 2 * 32 * D + 2 * 8 * D
    assert rec["state_size_total"] == total and rec["state_size"] == total // 2 and rec["state_size_reason"] is None
    assert total == state_size("softmax", {}, dim=D, num_heads=H, seq_len=32) + \
        state_size("sliding_window", {"window": 8}, dim=D, num_heads=H, seq_len=32)
    # the model trained is the schedule's: same parameter count as the model built here
    model = TASKS.create("mqar", **MQAR).build_model(ModelConfig(**cell.model, mixer="sliding_window",
                                                                 mixer_options={"window": 8}, schedule="masformer"))
    assert rec["params"] == sum(p.numel() for p in model.parameters())
    # and it is named as one row of the leaderboard
    assert list(entries([rec])["mqar"]) == ["masformer"]


def test_model_state_size_needs_every_layer():
    layers = [("softmax", {}), ("sliding_window", {"window": 4})]
    assert model_state_size(layers, dim=16, num_heads=2, seq_len=8) == (2 * 8 * 16 + 2 * 4 * 16, None)
    assert state_size("fnet", {}, dim=16, num_heads=2, seq_len=8) is None  # a Fourier mix of the whole input
    total, reason = model_state_size([("softmax", {}), ("fnet", {})], dim=16, num_heads=2, seq_len=8)
    assert total is None and reason == "layer 1 (fnet) has no finite decoding state and no family count"


# -- labels --------------------------------------------------------------------------------------------------------

def test_labelled_runs_are_two_rows_and_resume_by_label(tmp_path, monkeypatch):
    monkeypatch.setattr(suite_mod, "run_capacity_cell", lambda cell, machine=None: run(cell))
    out = tmp_path / "capacity.jsonl"
    post, = cells(["softmax"], model_overrides={"block": "post_norm"}, label="post_norm")
    deep, = cells(["softmax"], model_overrides={"block": "deepnorm"}, label=" deepnorm ")
    assert deep.label == "deepnorm" and json.loads(post.key)["label"] == "post_norm"
    # the label is part of the key: equal cells but for the label are two cells
    assert dataclasses.replace(post, label="deepnorm", model=deep.model).key == deep.key != post.key
    first = run_suite([post], out, progress=False)
    second = run_suite([deep], out, progress=False)  # not skipped as the post_norm cell
    assert [r["status"] for r in first + second] == ["ok", "ok"], [r["reason"] for r in first + second]
    assert [(r["label"], r["model"]["block"]) for r in first + second] == [("post_norm", "post_norm"),
                                                                          ("deepnorm", "deepnorm")]
    calls = []
    monkeypatch.setattr(suite_mod, "run_capacity_cell", lambda cell, machine=None: calls.append(cell))
    assert run_suite([post, deep], out, progress=False) == first + second and calls == []  # both resumed
    table = entries(load_records(out))
    assert sorted(table["mqar"]) == ["softmax [deepnorm]", "softmax [post_norm]"]
    md = write_leaderboard(load_records(out), tmp_path / "lb")["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| softmax [")]
    assert len(rows) == 2 and {r.split(" | ")[0] for r in rows} == {"| softmax [deepnorm]", "| softmax [post_norm]"}
    # what each label changed, under the task's line
    assert "  - label **deepnorm**: block=deepnorm" in md and "  - label **post_norm**: block=post_norm" in md


def test_suite_cli_takes_a_label_and_presets(tmp_path, capsys):
    from lightformer.cli import main

    out = tmp_path / "cap.jsonl"
    argv = ["suite", "--tasks", "mqar", "--mixers", "masformer,mamba_hybrid", "--seeds", "0", "--max-steps", "1",
            "--task-option", "mqar.seq_len=32", "--model", "block=sandwich", "--model", "num_layers=4",
            "--label", "sandwich", "--out", str(out), "--no-progress", "--json", "--timeout", "0.01"]
    assert main(argv) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r["mixer"], r["label"], r["model"]["block"]) for r in recs] == [
        ("masformer", "sandwich", "sandwich"), ("mamba_hybrid", "sandwich", "sandwich")]
    assert recs[0]["schedule"] == ["softmax"] + ["sliding_window"] * 3
    assert recs[1]["schedule"] == ["mamba2"] * 3 + ["softmax"]
    assert all(r["status"] == "timeout" for r in recs)  # (the 10 ms timeout: only the records are checked here)


# -- divergence ----------------------------------------------------------------------------------------------------

def poison(monkeypatch, *, at_step: int, runs: int | None):
    """Make the training loss NaN from training step ``at_step`` on, in the first ``runs`` runs (None: all)."""
    mqar = type(TASKS.create("mqar", **MQAR))
    real = mqar.loss
    seen: dict[int, int] = {}

    def loss(self, model, batch):
        out = real(self, model, batch)
        if not model.training:
            return out
        run_index = list(seen).index(id(model)) if id(model) in seen else len(seen)
        seen[id(model)] = seen.get(id(model), 0) + 1
        if (runs is None or run_index < runs) and seen[id(model)] >= at_step:
            out = dataclasses.replace(out, loss=out.loss * torch.tensor(float("nan")))
        return out

    monkeypatch.setattr(mqar, "loss", loss)


def test_a_nan_loss_stops_training_at_its_step(monkeypatch):
    from lightformer.train.config import RunConfig, TaskSpec, TrainConfig
    from lightformer.train.trainer import Trainer

    poison(monkeypatch, at_step=2, runs=None)
    lines: list[str] = []
    trainer = Trainer(RunConfig(ModelConfig(dim=32, num_layers=1, num_heads=2, max_len=32),
                                TrainConfig(batch_size=8, max_steps=10, eval_interval=1, eval_iters=1, bf16=False,
                                            warmup_steps=1),
                                TaskSpec("mqar", MQAR)), log=lines.append)
    result = trainer.fit(progress_bar=False)
    assert result.diverged_at == 2 and result.steps == 2  # stopped, not 8 more steps on NaN weights
    assert math.isnan(result.history[-1]["train_loss"]) and result.history[-1]["step"] == 2
    assert math.isfinite(result.history[0]["train_loss"]) and result.checkpoint is None
    assert "step 2: training loss nan: diverged, stopping" in lines


def test_every_lr_diverged_is_a_diverged_record(monkeypatch):
    poison(monkeypatch, at_step=2, runs=None)
    cell, = cells(["softmax"])
    rec = run(cell)
    assert rec["status"] == "diverged" and rec["diverged_at"] == 2 and rec["value"] is None
    assert rec["reason"] == "the training loss became NaN or infinite at every learning rate: lr 0.001 at step 2, " \
                            "lr 0.03 at step 2"
    assert [g["diverged_at"] for g in rec["lr_grid"]] == [2, 2] and rec["lr"] is None
    assert all(math.isnan(g["history"][-1]["train_loss"]) for g in rec["lr_grid"])
    assert rec["state_size"] == 2 * 32 * cell.model["dim"]  # known without a finished run


def test_a_diverged_lr_is_not_chosen(monkeypatch):
    poison(monkeypatch, at_step=2, runs=1)  # the first learning rate's run only
    rec = run(cells(["softmax"])[0])
    assert rec["status"] == "ok" and rec["lr"] == LRS[1] and rec["diverged_at"] is None
    assert [g["diverged_at"] for g in rec["lr_grid"]] == [2, None]
    assert rec["val_value"] == rec["lr_grid"][1]["val"] and math.isfinite(rec["value"])


def test_curves_png_and_a_diverged_row_render(tmp_path, monkeypatch):
    from lightformer.cli import main

    ok = run(cells(["softmax"])[0])
    poison(monkeypatch, at_step=2, runs=None)
    bad = run(cells(["sliding_window"])[0])
    old = capacity_record(cells(["linear"])[0], MACHINE, status="ok")  # written before divergence was detected
    old.update(metric="accuracy", value=float("nan"), lr=1e-3, steps=3,
               lr_grid=[{"lr": 1e-3, "val": float("nan"), "steps": 3, "history": [
                   {"step": 1, "val_accuracy": 0.2, "train_loss": 3.0},
                   {"step": 3, "val_accuracy": float("nan"), "train_loss": float("inf")}]}])
    results = tmp_path / "cap.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in (ok, bad, old)))  # NaN survives JSON lines
    assert load_records(results)[1]["status"] == "diverged"
    table = entries(load_records(results))["mqar"]
    assert [(c.lr, c.diverged_at) for c in table["sliding_window"].curves] == [(1e-3, 2), (3e-2, 2)]
    assert [(c.lr, c.diverged_at, c.points) for c in table["linear"].curves] == [(1e-3, 3, [(1, 0.2)])]
    assert table["softmax"].curves[0].points[-1][0] == STEPS and table["softmax"].curves[0].diverged_at is None
    out = tmp_path / "report"
    assert main(["report", str(results), "--out-dir", str(out)]) == 0
    png = out / "capacity_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    md = (out / "capacity.md").read_text()
    assert "![capacity_curves](capacity_curves.png)" in md
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| diverged (step 2) |" in rows["sliding_window"] and "| diverged (step 3) |" in rows["linear"]
    page = (out / "capacity.html").read_text()
    assert "alt='capacity_curves.png'" in page and page.count("data:image/png;base64,") == 2  # state, curves


# -- compare and advise take presets -------------------------------------------------------------------------------

def test_compare_trains_a_preset_as_one_architecture(tmp_path):
    from lightformer.tasks.text import stdlib_bytes

    data = tmp_path / "corpus.txt"
    data.write_bytes(stdlib_bytes()[:30_000])
    out = run_compare(["masformer"], data=str(data), tokenizer="byte", budget_s=0.5, seeds=[0], recall_budget_s=0.3,
                      recall_len=32, seq_lens=[64], out_dir=str(tmp_path / "cmp"), repeats=1, timeout_s=60,
                      log=lambda s: None)
    records = load_records(out["results"])
    quality, = [r for r in records if r["kind"] == "quality"]
    assert quality["mixer"] == "masformer" and quality["model"]["schedule"] == "masformer"
    assert quality["model"]["mixer"] == "sliding_window" and quality["options"] == {"window": 64}
    recall, = [r for r in records if r["kind"] == "capacity"]
    assert recall["mixer"] == "masformer" and recall["schedule"] == ["softmax", "sliding_window"]
    assert not [r for r in records if r["kind"] == "bench"]  # a bench cell is one mixer layer
    text = out["markdown"].read_text()
    assert "| masformer | window=64 | rope |" in text
    assert "the schedule presets (masformer) are whole models and have no single-layer bench cell" in text
    # advise takes the preset as a candidate, named as a whole; without its layer mixers' cells it is unmeasured
    a = advise(records, seq_len=64, causal=True, task="mqar")
    assert {c.mixer: c.reason for c in a.rejected}["masformer"].startswith("layer mixer softmax: unmeasured")
    with pytest.raises(ValueError, match="neither a registered mixer nor a schedule preset"):
        run_compare(["hybrid_of_nothing"], out_dir=str(tmp_path))


def test_advise_judges_a_preset_by_its_layers():
    def cap(mixer, value):
        r = capacity_record(cells([mixer])[0], MACHINE, status="ok")
        r.update(metric="accuracy", value=value, seq_len=32)
        return r

    records = [cap("softmax", 0.9), cap("masformer", 0.95), cap("mamba_hybrid", 0.5)]
    causal = {c.mixer: c.reason for c in advise(records, seq_len=64, causal=True, task="mqar").rejected}
    # no bench cell of its layer mixers: unmeasured, naming the first layer mixer without one
    assert causal["masformer"].startswith("layer mixer softmax: unmeasured") and \
        causal["mamba_hybrid"].startswith("layer mixer mamba2: unmeasured")
    # non-causal: mamba_hybrid's mamba2 layers are causal-only; masformer's layers are not, so it is only unmeasured
    both = {c.mixer: c.reason for c in advise(records, seq_len=64, causal=False).rejected}
    assert both["mamba_hybrid"] == "causal-only (capabilities.non_causal=False)"
    assert both["masformer"].startswith("layer mixer softmax: unmeasured")
    assert not architecture_capabilities("mamba_hybrid").non_causal and architecture_capabilities("masformer").causal
    # a preset no record names is no candidate
    a = advise(records[:1], seq_len=64)
    assert not {"masformer", "mamba_hybrid"} & {c.mixer for c in a.picks + a.rejected}
    assert "masformer: layer mixer softmax: unmeasured" in advise(records, seq_len=64).format()
    # with its layer mixers' own cells, a preset costs the mean over its 4 layers: (1 softmax + 3 sliding_window) / 4
    from tests.bench.test_advise import rec

    bench = [rec("softmax", 64, 100.0, 40.0, causal=True), rec("sliding_window", 64, 20.0, 8.0, causal=True)]
    picks = {c.mixer: c for c in advise(records + bench, seq_len=64, causal=True, task="mqar").picks}
    mas = picks["masformer"]
    assert (mas.time_ms, mas.mem_mib) == pytest.approx(((100 + 3 * 20) / 4, (40 + 3 * 8) / 4))
    assert mas.quality == pytest.approx(0.95) and "1×softmax + 3×sliding_window" in mas.cost_note


def test_suite_eval_every_sets_the_validation_interval_and_the_key():
    from lightformer.bench.suite import build_cells

    plain, = build_cells(["mqar"], ["softmax"], [0], budget_s=None, max_steps=10)
    curve, = build_cells(["mqar"], ["softmax"], [0], budget_s=None, max_steps=10, eval_every=5)
    assert curve.train["eval_interval"] == 5 and "eval_interval" not in plain.train
    assert curve.key != plain.key
    with pytest.raises(ValueError, match="eval_every must be a positive"):
        build_cells(["mqar"], ["softmax"], [0], budget_s=None, max_steps=10, eval_every=0)
