"""Whole-model bench cells (``--modes model-fwd+bwd``): records, the per-mixer gate, reports, bad names."""

from __future__ import annotations

import argparse
import json

import pytest

from lightformer.bench import Grid, load_records, run_sweep, write_report
from lightformer.bench.grid import Cell, cell_key
from lightformer.bench.model_cell import layer_mixers, model_gate, model_schedule
from lightformer.bench.plan import expand
from lightformer.bench.table import build_tables

MODEL_KEYS = ("architecture", "num_layers", "layer_mixers", "position", "position_note", "schedule")
MACHINE = ("cpu", "torch", "python", "git_commit", "timestamp")


def model_grid(**kw):
    base = dict(seq_lens=[32], batches=[1], dim=32, heads=2, dtypes=["fp32"], modes=["model-fwd+bwd"],
                causal=[True], threads=1, warmup=1, repeats=1, timeout_s=120.0, options={"sliding_window": {"window": 8}})
    base.update(kw)
    return Grid(**base)


def model_cell(mixer, options, num_layers=4, **kw):
    base = dict(impl="lightformer", mixer=mixer, options=options, seq_len=16, batch=1, dim=32, heads=2,
                dtype="fp32", mode="model-fwd+bwd", causal=True, threads=1, num_layers=num_layers)
    base.update(kw)
    return Cell(**base)


def test_model_cells_record_the_stack_and_every_field(tmp_path):
    out = tmp_path / "m.jsonl"
    recs = run_sweep(model_grid(mixers=["masformer", "mamba_hybrid"]), out, progress=False)
    # the all-softmax baseline is measured first, in the same run
    assert [r["mixer"] for r in recs] == ["softmax", "masformer", "mamba_hybrid"]
    by = {r["mixer"]: r for r in recs}
    for r in recs:
        assert r["status"] == "ok", r["reason"]
        assert r["kind"] == "bench" and r["schema"] == 3 and r["mode"] == "model-fwd+bwd" and r["impl"] == "lightformer"
        assert r["threads"] == 1 and r["num_layers"] == 4 and r["architecture"] == r["mixer"] == r["label"]
        assert all(isinstance(r[k], str) and r[k] for k in MACHINE)
        assert all(k in r for k in MODEL_KEYS)
        assert r["time_ms"] > 0 and r["mem_mib"] >= 0 and len(r["times_ms"]) == 1 and r["elapsed_s"] > 0
        assert r["flops_family"] == "model" and r["gflops"] == pytest.approx(r["flops"] / r["time_ms"] / 1e6)
        assert r["tokens_per_s"] == pytest.approx(32 / (r["time_ms"] / 1e3))
        assert r["gate"]["passed"] is True and r["gate"]["max_abs_err"] <= 1e-6
    assert by["softmax"]["layer_mixers"] == ["softmax"] * 4 and by["softmax"]["options"] == {"softmax": {}}
    mas = by["masformer"]
    assert mas["layer_mixers"] == ["softmax", "sliding_window", "sliding_window", "sliding_window"]
    assert mas["options"] == {"softmax": {}, "sliding_window": {"window": 8}}  # the bench's option, overridden
    assert mas["schedule"] == "softmax()@0; sliding_window(window=8)@1,2,3"
    assert mas["position"] == "rope" and mas["position_note"] is None
    hyb = by["mamba_hybrid"]
    assert hyb["layer_mixers"] == ["mamba2", "mamba2", "mamba2", "softmax"]
    assert hyb["position"] == "none" and "mamba2" in hyb["position_note"]
    # the gate ran once per distinct mixer
    assert set(mas["gate"]["mixers"]) == {"softmax", "sliding_window"}
    assert set(hyb["gate"]["mixers"]) == {"mamba2", "softmax"}
    assert all(g["passed"] and g["kind"] == "oracle" for r in recs for g in r["gate"]["mixers"].values())
    # all-softmax FLOPs: 4 layers × 3 × (exact causal attention + GELU MLP of 4·D)
    b, t, d = 1, 32, 32
    attention = 8 * b * t * d * d + 4 * b * t * d * (t + 1) / 2
    assert by["softmax"]["flops"] == pytest.approx(4 * 3 * (attention + 4 * b * t * d * 4 * d))
    # resume: a second run measures nothing
    again = run_sweep(model_grid(mixers=["masformer", "mamba_hybrid"]), out, progress=False)
    assert [r["timestamp"] for r in again] == [r["timestamp"] for r in recs] and len(load_records(out)) == 3


def test_schedule_of_a_record_rebuilds_the_measured_stack():
    from lightformer.models import ModelConfig

    cell = model_cell("masformer", {"softmax": {}, "sliding_window": {"window": 8}}, num_layers=8)
    assert layer_mixers("masformer", 8) == ("softmax",) * 2 + ("sliding_window",) * 6
    config = ModelConfig(dim=32, num_heads=2, num_layers=8, schedule=model_schedule(cell), position="rope")
    assert config.mixers == layer_mixers("masformer", 8)
    assert [dict(s.mixer_options) for s in config.layer_specs()][2:] == [{"window": 8}] * 6
    linformer = model_cell("linformer", {"linformer": {"proj_len": 4, "max_len": "T"}}, num_layers=2)
    assert model_schedule(linformer) == "linformer(max_len=16, proj_len=4)@0,1"  # "T" resolved to the cell's T


def test_gate_runs_the_mixer_gate_for_each_distinct_mixer(monkeypatch, plugin_env):
    from lightformer.bench import cell as cell_module
    from lightformer.bench.plan import load_plugins
    from lightformer.models import schedule

    seen = []
    real = cell_module.oracle_gate

    def spy(c):
        seen.append((c.mixer, dict(c.options), c.mode, c.num_layers))
        return real(c)

    monkeypatch.setattr(cell_module, "oracle_gate", spy)
    gate = model_gate(model_cell("masformer", {"softmax": {}, "sliding_window": {"window": 8}}))
    assert seen == [("softmax", {"position": "rope"}, "fwd+bwd", None),
                    ("sliding_window", {"window": 8, "position": "rope"}, "fwd+bwd", None)]
    assert gate["passed"] is True and set(gate["mixers"]) == {"softmax", "sliding_window"} and gate["reason"] is None

    # one wrong mixer in a hybrid fails the whole model, and the reason names it
    load_plugins([plugin_env])
    monkeypatch.setitem(schedule.SCHEDULE_PRESETS, "bench_test_hybrid",
                        (lambda n: "softmax; bench_test_wrong@-1", "test only"))
    seen.clear()
    gate = model_gate(model_cell("bench_test_hybrid", {"softmax": {}, "bench_test_wrong": {}}, num_layers=2))
    assert [s[0] for s in seen] == ["softmax", "bench_test_wrong"]
    assert gate["passed"] is False and gate["mixers"]["softmax"]["passed"] is True
    assert gate["mixers"]["bench_test_wrong"]["passed"] is False
    assert gate["reason"].startswith("bench_test_wrong: max |forward - oracle|")


def test_a_wrong_mixer_gives_a_model_no_speed(tmp_path, plugin_env):
    rec = run_sweep(model_grid(mixers=["bench_test_wrong"], peers="none", plugins=[plugin_env]),
                    tmp_path / "w.jsonl", progress=False)[0]
    assert rec["status"] == "gate_failed" and rec["time_ms"] is None and rec["times_ms"] == []
    assert rec["mem_mib"] is None and rec["gate"]["mixers"]["bench_test_wrong"]["passed"] is False
    assert rec["reason"].startswith("bench_test_wrong: ") and rec["layer_mixers"] == ["bench_test_wrong"] * 4


def test_stacks_follow_their_capabilities(tmp_path):
    recs = run_sweep(model_grid(mixers=["mamba_hybrid"], causal=[False], peers="none"), tmp_path / "u.jsonl",
                     progress=False)
    assert len(recs) == 1 and recs[0]["status"] == "unsupported"
    assert "'mamba_hybrid' is causal-only" in recs[0]["reason"] and recs[0]["layer_mixers"][0] == "mamba2"


def test_mixer_cells_keep_their_keys():
    """Records written before model cells have no num_layers; mixer cells keep None, so resumes still match."""
    (cell,) = expand(Grid(mixers=["softmax"], seq_lens=[16], peers="none", threads=1))
    assert cell.num_layers is None
    old = {k: v for k, v in json.loads(cell.to_json()).items() if k != "num_layers"}
    assert cell_key(old) == cell.key
    assert expand(model_grid(mixers=["softmax"], num_layers=6))[0].num_layers == 6


@pytest.mark.parametrize("argv, needle", [
    (["--modes", "model-fwd+bwd", "--mixers", "softmax,no_such_arch"], "--mixers 'no_such_arch'"),
    (["--modes", "fwd+bwd", "--mixers", "masformer"], "--mixers 'masformer' is a schedule preset"),
    (["--modes", "model-fwd+bwd", "--mixers", "masformer", "--layers", "0"], "--layers"),
    (["--modes", "model-bwd", "--mixers", "masformer"], "mode 'model-bwd' unknown"),
])
def test_bad_names_are_clear_errors(tmp_path, capsys, argv, needle):
    from lightformer.bench.cli import add_bench_parser

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv, "--seq-lens", "16", "--out", str(tmp_path / "x.jsonl")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not (tmp_path / "x.jsonl").exists()


def rec(arch, mixers, t, time_ms, mem, status="ok", position="rope", options=None):
    return {"kind": "bench", "impl": "lightformer", "label": arch, "mixer": arch, "architecture": arch,
            "options": options or {m: {} for m in mixers}, "layer_mixers": mixers, "num_layers": len(mixers),
            "position": position, "seq_len": t, "batch": 1, "dim": 512, "heads": 8, "dtype": "fp32",
            "mode": "model-fwd+bwd", "causal": True, "threads": 1, "status": status, "time_ms": time_ms,
            "mem_mib": mem, "cpu": "Test CPU", "torch": "2.x", "git_commit": "abc1234",
            "timestamp": "2025-01-02T03:04:05+00:00"}


SOFT = ["softmax"] * 4
MAS = ["softmax", "sliding_window", "sliding_window", "sliding_window"]
HYB = ["mamba2", "mamba2", "mamba2", "softmax"]
W = {"softmax": {}, "sliding_window": {"window": 256}}
RECORDS = [
    rec("softmax", SOFT, 4096, 1000.0, 800.0), rec("softmax", SOFT, 16384, 12000.0, 6400.0),
    rec("masformer", MAS, 4096, 1200.0, 480.0, options=W), rec("masformer", MAS, 16384, 6000.0, 1600.0, options=W),
    rec("mamba_hybrid", HYB, 4096, 900.0, 400.0, position="none"),
    rec("mamba_hybrid", HYB, 16384, None, None, status="timeout", position="none"),
    # a mixer record in the same file: its own table, before the model section
    {**rec("softmax", SOFT, 4096, 100.0, 80.0), "impl": "sdpa", "label": "sdpa", "mode": "fwd+bwd",
     "options": {}, "num_layers": None, "layer_mixers": None, "architecture": None, "position": None},
]


def test_model_table_rows_ratios_and_crossover():
    mixer_table, table = build_tables(RECORDS)
    assert not mixer_table.model and table.model
    assert table.title == "whole model, 4 layers, fwd+bwd · fp32 · causal · B=1 D=512 H=8 · 1 threads"
    assert table.header == ["architecture", "T=4096", "T=16384", "crossover vs all-softmax"]
    assert table.stem.endswith("_l4") and table.rows[0][0] == "softmax: 4×softmax · position rope"
    rows = {r[0].split(":")[0]: r for r in table.rows}
    assert rows["softmax"][-1] == "— (baseline)" and rows["softmax"][1] == "1000 ms / 800 MiB"
    mas = rows["masformer"]
    assert mas[0] == "masformer: softmax + 3×sliding_window [sliding_window.window=256] · position rope"
    assert mas[1] == "1200 ms / 480 MiB · ×1.20 time · ×0.60 mem vs all-softmax"
    assert mas[2] == "6000 ms / 1600 MiB · ×0.50 time · ×0.25 mem vs all-softmax" and mas[-1] == "T=16384"
    hyb = rows["mamba_hybrid"]
    assert hyb[0] == "mamba_hybrid: 3×mamba2 + softmax · position none" and hyb[2] == "timeout" and hyb[-1] == "T=4096"
    assert table.series[mas[0]] == {4096: (1200.0, 480.0), 16384: (6000.0, 1600.0)}


def test_report_has_a_model_section_with_plots(tmp_path):
    paths = write_report(RECORDS, tmp_path)
    md = paths["markdown"].read_text()
    assert md.index("## fwd+bwd · fp32") < md.index("# Whole models") < md.index("## whole model, 4 layers")
    assert md.count("# Whole models") == 1 and "| masformer: softmax + 3×sliding_window" in md
    model_pngs = [p for k, p in paths.items() if k.endswith(".png") and "model-fwd-bwd" in k]
    assert sorted(p.name.rsplit("_", 1)[1] for p in model_pngs) == ["memory.png", "time.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 1000 for p in model_pngs)
    page = paths["html"].read_text()
    assert "<h1>Whole models</h1>" in page and page.count("data:image/png;base64,") == 4
