"""The capacity suite (``lightformer suite``): cells, the sweep with resume and failure statuses, the in-process
cell, the leaderboard, the CLI and ``advise(task=...)``.

Training is kept tiny (MQAR at T=32 with 4 pairs, 3 steps of batch 16, one thread) so the numbers are real but
the whole file runs in seconds; the subprocess sweep is shared by the tests that read it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil

import pytest
import torch

from lightformer.bench import capacity as capacity_mod
from lightformer.bench import runner as runner_mod
from lightformer.bench import suite as suite_mod
from lightformer.bench.capacity import CapacityCell, run
from lightformer.bench.leaderboard import (CHAR_W, LABEL_DX, LABEL_DY, LABEL_H, Entry, best_and_ties, entries,
                                          header_lines, label_offsets, mean_accuracy, mean_ranks, write_leaderboard)
from lightformer.bench.results import capacity_record, capacity_records, load_records
from lightformer.bench.recipes import recipe
from lightformer.bench.state_size import state_size
from lightformer.bench.suite import build_cells, default_mixers, run_capacity_cell, run_suite
from lightformer.mixers import MIXERS
from lightformer.tasks import TASKS

MQAR = {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 32}
ICL = {"dim": 4, "num_points": 9}  # T = 2k - 1 = 17
LRS = [1e-3, 3e-2]
STEPS = 3
BATCH = 16


def tiny(cells: list[CapacityCell], **changes) -> list[CapacityCell]:
    """The cells with a small batch and a 1-step warm-up (the recipe's batch of 256 is for real runs)."""
    return [dataclasses.replace(c, train={**c.train, "batch_size": BATCH, "bf16": False, "warmup_steps": 1},
                                **changes) for c in cells]


def mqar_cells(mixers, seeds=(0,), **kw) -> list[CapacityCell]:
    return tiny(build_cells(["mqar"], mixers, list(seeds), budget_s=None, max_steps=STEPS, lrs=LRS, eval_n=32,
                            threads=1, task_options={"mqar": MQAR}, **kw))


def best_of_grid(rec: dict) -> dict:
    """The lr_grid entry the choice rule must pick: best val in the metric's direction, the first among equals."""
    sign = 1 if rec["metric"] == "nmse" else -1
    best = rec["lr_grid"][0]
    for g in rec["lr_grid"][1:]:
        if sign * g["val"] < sign * best["val"]:
            best = g
    return best


# -- build_cells ------------------------------------------------------------------------------------------------

def test_grid_is_task_major_then_mixer_then_seed():
    cells = build_cells(["mqar", "icl_regression"], ["softmax", "sliding_window"], [0, 1], budget_s=None,
                        max_steps=3, task_options={"mqar": MQAR, "icl_regression": ICL})
    assert [(c.task, c.mixer, c.seed) for c in cells] == [
        ("mqar", "softmax", 0), ("mqar", "softmax", 1), ("mqar", "sliding_window", 0),
        ("mqar", "sliding_window", 1), ("icl_regression", "softmax", 0), ("icl_regression", "softmax", 1),
        ("icl_regression", "sliding_window", 0), ("icl_regression", "sliding_window", 1)]
    assert len({c.key for c in cells}) == 8
    # the seed is the only difference between a cell and its sibling
    a, b = cells[0], cells[1]
    assert dataclasses.replace(a, seed=1) == b


def test_default_mixers_follow_the_task_direction():
    causal = default_mixers("mqar")
    bidir = default_mixers("listops")
    assert causal and all(MIXERS.get(m).capabilities.causal for m in causal)
    # classification takes every mixer: causal-only ones (mamba, ...) encode causally (tasks.base.encoder_causal)
    assert bidir == list(MIXERS.names()) and "mamba" in bidir
    assert "softmax" in causal and "softmax" in bidir
    assert not MIXERS.get("linformer").capabilities.causal
    assert "linformer" not in causal and "linformer" in bidir
    assert set(causal) == {m for m in MIXERS.names() if MIXERS.get(m).capabilities.causal}
    assert default_mixers("icl_regression") == causal  # regression is trained causally too

    cells = build_cells(["listops"], None, [0], budget_s=1.0)
    assert [c.mixer for c in cells] == bidir


def test_recipe_values_are_carried_into_the_cells():
    cells = build_cells(["mqar"], ["sliding_window", "dilated_window", "linear"], [0], budget_s=None,
                        max_steps=3, task_options={"mqar": {**MQAR, "seq_len": 64}})
    sw, dw, lin = cells
    rec = recipe("mqar")
    # model: the recipe's, RoPE (sliding_window accepts it), max_len = the task's T
    assert rec.model["position"] == "auto"
    assert sw.model == {**rec.model, "position": "rope", "max_len": 64}
    assert lin.model == {**rec.model, "position": "learned", "max_len": 64}
    assert lin.model["position"] == "learned"  # linear attention takes no RoPE
    assert "rope" not in MIXERS.get("linear").capabilities.positions
    # length-sized options: window T/4, the dilated window half of that
    assert sw.mixer_options == {"window": 16}
    assert dw.mixer_options["window"] == 8
    assert lin.mixer_options == {}
    # the MQAR recipe's training options, the step cap given, no time budget
    assert sw.train == {**rec.train, "max_steps": 3} and "max_time" not in sw.train
    assert sw.train["batch_size"] == 256  # MQAR leaves its 1/K plateau only with large batches
    assert sw.lrs == rec.lrs and len(sw.lrs) >= 2 and sw.eval_n == rec.eval_n
    assert sw.task_options == {**MQAR, "seq_len": 64}
    assert sw.threads == len(os.sched_getaffinity(0))
    assert sw.timeout_s == suite_mod.STEP_ONLY_TIMEOUT_S  # a step budget alone bounds no wall time
    assert sw.max_memory_mib is None

    # a time budget per learning rate: max_time, the recipe's step cap kept, timeout 1.5 x the grid + 10 min
    timed = build_cells(["mqar"], ["softmax"], [0], budget_s=5.0)[0]
    assert timed.train["max_time"] == 5.0 and timed.train["max_steps"] == rec.train["max_steps"]
    assert timed.timeout_s == pytest.approx(1.5 * 5.0 * 2 + 600.0)


def test_bidirectional_recipe_sizes_by_the_task_length():
    rec = recipe("listops")
    T = TASKS.create("listops", **rec.task_options).seq_len
    assert T == 255  # the CPU-sized lengths (64, 256), not LRA's (500, 2000)
    lin, sw = build_cells(["listops"], ["linformer", "sliding_window"], [0], budget_s=10.0)
    assert lin.model == {**rec.model, "position": "learned", "max_len": T}
    assert lin.lrs == rec.lrs and lin.eval_n == rec.eval_n and lin.train == {**rec.train, "max_time": 10.0}
    assert lin.mixer_options == {"max_len": T, "proj_len": max(8, min(256, T // 4))}
    assert sw.model["position"] == "rope"
    assert sw.mixer_options == {"window": max(8, min(256, T // 4))}


def test_overrides_win_over_the_recipe():
    cell = build_cells(["mqar"], ["sliding_window"], [3], budget_s=None, max_steps=7, lrs=[0.01],
                       task_options={"mqar": {"seq_len": 64, "num_kv_pairs": 2}, "listops": {"max_length": 9}},
                       mixer_options={"sliding_window": {"window": 4}, "softmax": {"bogus": 1}},
                       model_overrides={"dim": 32, "num_layers": 1}, eval_n=64, threads=1, timeout_s=12.5,
                       max_memory_mib=256.0, train_overrides={"batch_size": 8, "warmup_steps": 0})[0]
    assert cell.task_options == {"seq_len": 64, "num_kv_pairs": 2}
    assert cell.mixer_options == {"window": 4}
    assert cell.model == {**recipe("mqar").model, "dim": 32, "num_layers": 1, "position": "rope", "max_len": 64}
    assert cell.model["max_len"] == 64
    assert cell.lrs == (0.01,) and cell.eval_n == 64 and cell.seed == 3
    assert cell.train == {**recipe("mqar").train, "max_steps": 7, "batch_size": 8, "warmup_steps": 0}
    assert dataclasses.replace(cell, train={**cell.train, "batch_size": 16}).key != cell.key
    assert (cell.threads, cell.timeout_s, cell.max_memory_mib) == (1, 12.5, 256.0)
    # threads, timeout and the memory cap are not part of what is measured: same key
    assert dataclasses.replace(cell, threads=2, timeout_s=1.0, max_memory_mib=None).key == cell.key
    assert dataclasses.replace(cell, seed=4).key != cell.key
    assert CapacityCell.from_json(cell.to_json()) == cell


def test_a_recipe_with_steps_is_its_own_budget():
    """Without --budget and --max-steps each task trains its recipe's steps; a flag still wins."""
    ind, sc = build_cells(["induction", "selective_copy"], ["softmax"], [0], budget_s=None)
    assert (ind.train["max_steps"], sc.train["max_steps"]) == (recipe("induction").steps, 1600)
    assert ind.train["stop_at"] == 0.99 and "max_time" not in ind.train
    assert build_cells(["induction"], ["softmax"], [0], budget_s=None, max_steps=5)[0].train["max_steps"] == 5
    # MQAR's cells keep the key they had when the sweep passed --max-steps 800
    assert build_cells(["mqar"], ["softmax"], [0], budget_s=None)[0].key == \
        build_cells(["mqar"], ["softmax"], [0], budget_s=None, max_steps=800)[0].key


def test_h3_trains_at_zoologys_head_dim_unless_overridden():
    h3, sm = build_cells(["mqar"], ["h3", "softmax"], [0], budget_s=10.0)
    assert (h3.model["dim"], h3.model["num_heads"]) == (64, 32)  # head_dim 2
    assert sm.model["num_heads"] == recipe("mqar").model["num_heads"]
    h3 = build_cells(["mqar"], ["h3"], [0], budget_s=10.0, model_overrides={"num_heads": 4, "dim": 32})[0]
    assert (h3.model["dim"], h3.model["num_heads"]) == (32, 4)
    h3 = build_cells(["mqar"], ["h3"], [0], budget_s=10.0, model_overrides={"dim": 32})[0]
    assert h3.model["num_heads"] == 16


@pytest.mark.parametrize("task", ["mqar", "listops"])
def test_hilo_keeps_a_local_and_a_pooled_head(task):
    """At the recipes' two heads the paper's alpha = 0.9 would make both heads Lo-Fi (pooled windows only)."""
    from lightformer.mixers.hilo import HiLoConfig

    cell = build_cells([task], ["hilo"], [0], budget_s=10.0)[0]
    cfg = HiLoConfig(dim=cell.model["dim"], num_heads=cell.model["num_heads"], alpha=cell.mixer_options["alpha"])
    assert (cfg.num_heads - cfg.num_lofi, cfg.num_lofi) == (1, 1)


@pytest.mark.parametrize("kw, match", [
    (dict(budget_s=None, max_steps=None, tasks=["mqar", "lm"]),
     "the recipes of lm set no step budget"),
    (dict(budget_s=-1.0), "budget must be positive, got -1"),
    (dict(budget_s=0.0), "budget must be positive"),
    (dict(budget_s=1.0, tasks=["nope"]), "unknown task 'nope'"),
    (dict(budget_s=1.0, mixers=["nope"]), "unknown mixer 'nope'"),
    (dict(budget_s=1.0, train_overrides={"batchsize": 8}), r"training field\(s\) \['batchsize'\] unknown"),
    (dict(budget_s=1.0, train_overrides={"lr": 0.1, "seed": 2}), r"lr \(give --lrs\), seed \(give --seeds\)"),
])
def test_bad_arguments_are_named(kw, match):
    tasks = kw.pop("tasks", ["mqar"])
    mixers = kw.pop("mixers", ["softmax"])
    with pytest.raises(ValueError, match=match):
        build_cells(tasks, mixers, [0], **kw)


# -- the sweep (subprocesses), shared ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep with every failure before the measured cell: unsupported, timeout, oom, then ok."""
    out = tmp_path_factory.mktemp("suite") / "capacity.jsonl"
    unsupported, = mqar_cells(["linformer"])
    timeout, = mqar_cells(["sliding_window"], timeout_s=0.5)
    oom, = mqar_cells(["softmax"], seeds=(1,), max_memory_mib=1)
    ok, = mqar_cells(["softmax"])
    cells = [unsupported, timeout, oom, ok]
    lines: list[str] = []
    records = run_suite(cells, out, progress=False, log=lines.append)
    return {"cells": cells, "records": records, "out": out, "log": lines}


def test_sweep_records_every_cell_in_order(sweep):
    recs = sweep["records"]
    assert [r["status"] for r in recs] == ["unsupported", "timeout", "oom", "ok"]
    assert [(r["mixer"], r["seed"]) for r in recs] == [("linformer", 0), ("sliding_window", 0), ("softmax", 1),
                                                       ("softmax", 0)]
    stored = load_records(sweep["out"])
    assert stored == recs  # appended as they were done, one line each
    assert len(sweep["out"].read_text().splitlines()) == 4
    for r, cell in zip(recs, sweep["cells"]):
        assert r["kind"] == "capacity" and r["schema"] == 1
        assert json.loads(capacity_mod.capacity_key(r)) == json.loads(cell.key)
    assert "linformer cannot be causal" in recs[0]["reason"]
    assert recs[1]["reason"] == "no result within --timeout 0.5 s" and recs[1]["total_seconds"] >= 0.5
    assert "allocate" in recs[2]["reason"]
    assert len(sweep["log"]) == 4
    assert sweep["log"][0].startswith("mqar / linformer / seed 0: unsupported")
    assert sweep["log"][3].startswith("mqar / softmax / seed 0: accuracy ")


def test_sweep_ok_record_has_the_measurements(sweep):
    import torch

    from lightformer.models.config import ModelConfig
    from lightformer.tasks.base import better

    cell, rec = sweep["cells"][3], sweep["records"][3]
    assert rec["status"] == "ok" and rec["reason"] is None
    assert rec["metric"] == "accuracy" and 0.0 <= rec["value"] <= 1.0
    assert rec["metrics"]["test_accuracy"] == rec["value"] and rec["metrics"]["test_loss"] > 0
    # the learning rate: one of the grid, the best on validation
    assert [g["lr"] for g in rec["lr_grid"]] == LRS
    best = best_of_grid(rec)
    assert rec["lr"] in LRS and rec["lr"] == best["lr"] and rec["val_value"] == best["val"]
    assert not any(better("accuracy", g["val"], rec["val_value"]) for g in rec["lr_grid"])
    assert all(g["steps"] == STEPS for g in rec["lr_grid"])
    assert rec["steps"] == STEPS and rec["seconds"] > 0 and rec["total_seconds"] >= rec["seconds"]
    # 3 steps of 16 sequences of 32 tokens, 4 scored queries each
    assert rec["tokens"] == STEPS * BATCH * 32 and rec["scored"] == STEPS * BATCH * 4
    assert rec["seq_len"] == 32
    # the model's size, counted on the same model built here
    task = TASKS.create("mqar", **MQAR)
    model = task.build_model(ModelConfig(**cell.model, mixer="softmax"))
    assert rec["params"] == sum(p.numel() for p in model.parameters()) > 0
    # softmax keeps the KV cache: 2 * T * D
    D, H = cell.model["dim"], cell.model["num_heads"]
    assert rec["state_size"] == 2 * 32 * D == state_size("softmax", {}, dim=D, num_heads=H, seq_len=32)
    # the machine line
    assert rec["torch"] == torch.__version__ and rec["python"] == platform.python_version()
    assert rec["threads"] == 1 and rec["cpu"] and rec["git_commit"]
    assert datetime.datetime.fromisoformat(rec["timestamp"]).tzinfo is not None
    assert "T=32" in rec["task_describe"]


def test_resume_runs_nothing_and_force_runs_everything(sweep, tmp_path, monkeypatch):
    out = tmp_path / "capacity.jsonl"
    shutil.copy(sweep["out"], out)

    def must_not_run(cell, machine=None):
        raise AssertionError(f"{cell.mixer} re-run on resume")

    monkeypatch.setattr(suite_mod, "run_capacity_cell", must_not_run)
    again = run_suite(sweep["cells"], out, progress=False)
    assert again == sweep["records"]
    assert len(out.read_text().splitlines()) == 4

    calls = []

    def fake(cell, machine=None):
        calls.append((cell.mixer, cell.seed))
        rec = capacity_record(cell, machine, status="ok")
        rec.update(metric="accuracy", value=0.5, lr=cell.lrs[0], steps=1)
        return rec

    monkeypatch.setattr(suite_mod, "run_capacity_cell", fake)
    forced = run_suite(sweep["cells"], out, force=True, progress=False)
    assert calls == [("linformer", 0), ("sliding_window", 0), ("softmax", 1), ("softmax", 0)]
    assert [r["value"] for r in forced] == [0.5] * 4
    assert len(out.read_text().splitlines()) == 8
    # the re-measured records replace the old ones
    assert sorted(r["value"] for r in capacity_records(load_records(out))) == [0.5] * 4


def test_error_records_are_retried_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "capacity.jsonl"
    cells = mqar_cells(["softmax", "sliding_window"])
    statuses = iter(["error", "oom"])

    def first(cell, machine=None):
        return capacity_record(cell, machine, status=next(statuses), reason="x")

    monkeypatch.setattr(suite_mod, "run_capacity_cell", first)
    assert [r["status"] for r in run_suite(cells, out, progress=False)] == ["error", "oom"]
    calls = []

    def second(cell, machine=None):
        calls.append(cell.mixer)
        return capacity_record(cell, machine, status="timeout", reason="y")

    monkeypatch.setattr(suite_mod, "run_capacity_cell", second)
    assert [r["status"] for r in run_suite(cells, out, progress=False)] == ["timeout", "oom"]
    assert calls == ["softmax"]  # the error is retried, the oom is a result
    assert len(load_records(out)) == 3


def test_unsupported_cell_spawns_no_subprocess(monkeypatch):
    def no_popen(*a, **k):
        raise AssertionError("a subprocess was started for an unsupported cell")

    monkeypatch.setattr(runner_mod.subprocess, "Popen", no_popen)
    cell, = mqar_cells(["linformer"])
    rec = run_capacity_cell(cell, MACHINE)  # (machine_info() runs git in a subprocess)
    assert rec["status"] == "unsupported" and rec["kind"] == "capacity"
    assert rec["reason"] == "linformer cannot be causal and task mqar is causal"
    assert rec["value"] is None and rec["lr_grid"] == []


# -- capacity.run in-process ---------------------------------------------------------------------------------------

def test_run_in_process_chooses_on_validation_and_reports_test():
    cell, = mqar_cells(["sliding_window"])
    rec = run(cell)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["metric"] == "accuracy" and 0.0 <= rec["value"] <= 1.0
    best = best_of_grid(rec)
    assert rec["lr"] == best["lr"] and rec["val_value"] == best["val"]
    assert rec["lr_grid"][0]["history"][-1]["step"] == STEPS
    assert rec["lr_grid"][0]["history"][-1]["val_accuracy"] == rec["lr_grid"][0]["val"]
    # sliding window of T/4 = 8: 2 * w * D floats
    assert cell.mixer_options == {"window": 8}
    D, H = cell.model["dim"], cell.model["num_heads"]
    assert rec["state_size"] == 2 * 8 * D == state_size("sliding_window", {"window": 8}, dim=D, num_heads=H,
                                                        seq_len=32)
    assert "baselines" not in rec


def test_run_regression_minimises_nmse_and_reports_baselines():
    cell, = tiny(build_cells(["icl_regression"], ["softmax"], [0], budget_s=None, max_steps=STEPS, lrs=LRS,
                             eval_n=32, threads=1, task_options={"icl_regression": ICL}))
    rec = run(cell)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["metric"] == "nmse" and rec["value"] > 0 and rec["metrics"] == {"test_nmse": rec["value"]}
    best = best_of_grid(rec)  # the lowest validation nmse
    assert rec["val_value"] == min(g["val"] for g in rec["lr_grid"]) == best["val"] and rec["lr"] == best["lr"]
    assert rec["seq_len"] == 17 and cell.model["max_len"] == 17
    assert rec["state_size"] == 2 * 17 * cell.model["dim"]
    task = TASKS.create("icl_regression", **ICL)
    assert rec["baselines"] == pytest.approx(task.baselines("test", 32))
    b = rec["baselines"]
    assert set(b) == {"zero", "least_squares", "one_step_gd"}
    assert b["least_squares"] < b["one_step_gd"] < b["zero"]


def test_run_reports_oom_and_error(monkeypatch):
    from lightformer.train import trainer as trainer_mod

    cell, = mqar_cells(["softmax"])

    def out_of_memory(self, **kw):
        raise MemoryError("no room for the activations")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", out_of_memory)
    rec = run(cell)
    assert rec["status"] == "oom" and rec["reason"] == "MemoryError: no room for the activations"
    assert rec["value"] is None

    def boom(self, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", boom)
    rec = run(cell)
    assert rec["status"] == "error" and "RuntimeError: boom" in rec["reason"] and "Traceback" in rec["reason"]

    def bad_option(self, **kw):
        raise ValueError("window must be positive")

    monkeypatch.setattr(trainer_mod.Trainer, "fit", bad_option)
    rec = run(cell)
    assert rec["status"] == "unsupported" and rec["reason"] == "window must be positive"


def test_sweep_goes_on_after_an_error(tmp_path, monkeypatch):
    """In-process cells: the first one's training raises, the next one is still measured and recorded."""
    from lightformer.train import trainer as trainer_mod

    real_fit = trainer_mod.Trainer.fit

    def fit(self, **kw):
        if self.config.model.mixer == "sliding_window":
            raise RuntimeError("boom")
        return real_fit(self, **kw)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fit)
    monkeypatch.setattr(suite_mod, "run_capacity_cell", lambda cell, machine=None: run(cell))
    out = tmp_path / "capacity.jsonl"
    lines: list[str] = []
    recs = run_suite(mqar_cells(["sliding_window", "softmax"]), out, progress=False, log=lines.append)
    assert [r["status"] for r in recs] == ["error", "ok"]
    assert "boom" in recs[0]["reason"]
    assert 0.0 <= recs[1]["value"] <= 1.0 and recs[1]["steps"] == STEPS
    assert [r["status"] for r in load_records(out)] == ["error", "ok"]
    assert lines[0].startswith("mqar / sliding_window / seed 0: error (")
    assert lines[1].startswith("mqar / softmax / seed 0: accuracy ")


# -- leaderboard (synthetic records) ----------------------------------------------------------------------------

MACHINE = {"cpu": "TestCPU 9000", "torch": "9.9.9", "python": "3.11.0", "git_commit": "abc1234",
           "timestamp": "2026-01-02T03:04:05+00:00"}
MODEL = {"dim": 64, "num_layers": 2, "num_heads": 2, "position": "rope", "ffn_mult": 2.0, "max_len": 32}
TRAIN = {"batch_size": 16, "max_steps": 3}
OPTS = {"mqar": MQAR, "icl_regression": ICL, "listops": {}}
METRIC = {"mqar": "accuracy", "icl_regression": "nmse", "listops": "accuracy"}
STATE = {"softmax": 4096, "sliding_window": 1024, "linear": 2112, "aft_simple": 128}
PARAMS = {"softmax": 68608, "sliding_window": 68608, "linear": 68000, "aft_simple": 60000}


def cap(task, mixer, seed, value=None, *, status="ok", seq_len=None, lrs=(1e-3, 3e-2)):
    """A capacity record as ``run`` fills it (no training)."""
    cell = CapacityCell(task=task, task_options=OPTS[task], mixer=mixer, mixer_options={}, model=MODEL,
                        train=TRAIN, lrs=tuple(lrs), seed=seed, eval_n=32, threads=1)
    r = capacity_record(cell, MACHINE, status=status, reason=None if status == "ok" else "x")
    if status == "ok":
        r.update(metric=METRIC[task], value=value, val_value=value, seq_len=seq_len or (32 if task == "mqar" else 17),
                 params=PARAMS[mixer], state_size=STATE[mixer], steps=3, seconds=1.5, lr=lrs[0])
    return r


LEADERBOARD = [
    cap("mqar", "softmax", 0, 0.10),  # replaced by the re-measured record below
    cap("mqar", "softmax", 0, 0.90), cap("mqar", "softmax", 1, 0.94),
    cap("mqar", "sliding_window", 0, 0.88), cap("mqar", "sliding_window", 1, 0.94),
    cap("mqar", "linear", 0, 0.50), cap("mqar", "linear", 1, 0.52), cap("mqar", "linear", 2, status="timeout"),
    cap("mqar", "aft_simple", 0, status="oom"), cap("mqar", "aft_simple", 1, status="oom"),
    cap("icl_regression", "linear", 0, 0.10), cap("icl_regression", "linear", 1, 0.12),
    cap("icl_regression", "softmax", 0, 0.125), cap("icl_regression", "softmax", 1, 0.125),
    cap("icl_regression", "sliding_window", 0, 0.10), cap("icl_regression", "sliding_window", 1, 0.16),
    cap("icl_regression", "aft_simple", 0, 0.50),
    {"kind": "bench", "mixer": "softmax", "status": "ok"},  # other kinds are ignored
]


def test_entries_take_the_latest_record_of_each_cell():
    table = entries(LEADERBOARD)
    assert sorted(table) == ["icl_regression", "mqar"]
    sm = table["mqar"]["softmax"]
    assert sm.values == [0.90, 0.94] and sm.statuses == ["ok", "ok"]
    assert sm.mean == pytest.approx(0.92) and sm.spread == pytest.approx(0.02)
    assert (sm.metric, sm.state_size, sm.params, sm.steps, sm.lrs) == ("accuracy", 4096, 68608, [3, 3],
                                                                        [1e-3, 1e-3])
    lin = table["mqar"]["linear"]
    assert lin.values == [0.50, 0.52] and lin.statuses == ["ok", "ok", "timeout"]
    aft = table["mqar"]["aft_simple"]
    assert aft.values == [] and aft.mean is None and aft.spread == 0.0 and aft.statuses == ["oom", "oom"]
    assert table["icl_regression"]["aft_simple"].spread == 0.0  # one seed: no spread


def test_best_and_ties_follow_the_metric_direction():
    table = entries(LEADERBOARD)
    # accuracy: highest mean wins; sliding_window (0.91 ± 0.03) is within the spread of softmax (0.92 ± 0.02)
    assert best_and_ties(table["mqar"]) == ("softmax", {"sliding_window"})
    # nmse: lowest mean wins (linear 0.11 ± 0.01); sliding_window 0.13 ± 0.03 is tied (0.02 <= 2·0.032), and so
    # is softmax 0.125 ± 0 (0.015 <= 2·0.01)
    assert best_and_ties(table["icl_regression"]) == ("linear", {"sliding_window", "softmax"})
    assert best_and_ties({"x": Entry("mqar", "x", "accuracy", statuses=["oom"])}) == (None, set())

    def row(metric, **values):
        return {m: Entry("t", m, metric, list(v)) for m, v in values.items()}

    # tied when the means differ by at most 2·sqrt(spread_a² + spread_b²)
    assert best_and_ties(row("accuracy", a=[0.8, 0.8], b=[0.71, 0.81])) == ("a", {"b"})    # 0.04 <= 0.1
    assert best_and_ties(row("accuracy", a=[0.8, 0.8], b=[0.75, 0.77])) == ("a", set())    # 0.04 > 0.02
    assert best_and_ties(row("accuracy", a=[0.8, 0.8], b=[0.76, 0.80])) == ("a", {"b"})    # 0.02 <= 0.04
    assert best_and_ties(row("accuracy", a=[0.70, 0.90], b=[0.77, 0.77])) == ("a", {"b"})  # 0.03 <= 0.2
    assert best_and_ties(row("nmse", a=[0.8, 0.8], b=[0.75, 0.77])) == ("b", set())
    assert best_and_ties(row("loss", a=[2.0], b=[1.0], c=[3.0])) == ("b", set())


def test_mean_ranks_over_the_tasks_measured():
    ranks = mean_ranks(entries(LEADERBOARD))
    # mqar: softmax 1, sliding_window 2, linear 3 (aft_simple oom, unranked); icl: linear 1, softmax 2, sw 3, aft 4
    assert ranks == {"softmax": 1.5, "sliding_window": 2.5, "linear": 2.0, "aft_simple": 4.0}
    # LRA's "Avg": accuracy tasks only, so icl_regression's nmse and aft_simple's oom do not count
    assert mean_accuracy(entries(LEADERBOARD)) == pytest.approx({"softmax": 0.92, "sliding_window": 0.91,
                                                                 "linear": 0.51})


def test_write_leaderboard_markdown_png_html(tmp_path):
    paths = write_leaderboard(LEADERBOARD, tmp_path, preamble="A tiny sweep.")
    md = paths["markdown"].read_text()
    lines = md.splitlines()
    assert lines[0] == "# lightformer capacity" and "A tiny sweep." in lines
    assert "Machine: TestCPU 9000 · 1 threads · torch 9.9.9 · git abc1234 · 2026-01-02" in lines
    assert ("- **mqar** (num_kv_pairs=4, seq_len=32, vocab_size=32): 2 layers × width 64, 2 heads "
            "(68,000–68,608 parameters); batch 16; budget ≤ 3 steps per learning rate, lr ∈ {0.001, 0.03} chosen "
            "on validation (32 examples); seeds [0, 1, 2]") in lines
    assert any(line.startswith("- **icl_regression** (dim=4, num_points=9): ") for line in lines)
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| mixer | icl_regression (nmse) | mqar (accuracy, %) | mean accuracy (%) | mean rank |"
    assert table[2:] == [  # ordered by mean rank; mean accuracy over the accuracy tasks only (mqar here)
        "| softmax | 0.125 ± 0.000 ≈ | **92.0 ± 2.0** ★ | 92.0 | 1.50 |",
        "| linear | **0.110 ± 0.010** ★ | 51.0 ± 1.0 (2/3 seeds) | 51.0 | 2.00 |",
        "| sliding_window | 0.130 ± 0.030 ≈ | 91.0 ± 3.0 ≈ | 91.0 | 2.50 |",
        "| aft_simple | 0.500 | oom | — | 4.00 |",
    ]
    assert "## Long Range Arena tasks next to LRA Table 1" not in md  # no LRA task in the records
    for task in ("icl_regression", "mqar"):
        png = tmp_path / f"capacity_{task}_state.png"
        assert paths[png.name] == png
        data = png.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![capacity_{task}_state](capacity_{task}_state.png)" in lines
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 2
    assert "<th>mqar (accuracy, %)</th>" in page and "<td>92.0 ± 2.0 ★</td>" in page
    assert "<td>91.0 ± 3.0 ≈</td>" in page and "TestCPU 9000" in page
    assert "src='capacity_" not in page  # self-contained: no reference to the PNG files


def test_write_leaderboard_without_measurements(tmp_path):
    paths = write_leaderboard([cap("mqar", "softmax", 0, status="oom")], tmp_path, name="cap")
    md = paths["markdown"].read_text()
    assert "| softmax | oom | — | — |" in md
    assert not list(tmp_path.glob("*.png")) and set(paths) == {"markdown", "html"}


# -- CLI -------------------------------------------------------------------------------------------------------

def test_report_of_a_capacity_only_file(tmp_path, capsys):
    from lightformer.cli import main

    results = tmp_path / "cap.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in LEADERBOARD if r["kind"] == "capacity"))
    out = tmp_path / "report"
    assert main(["report", str(results), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"markdown: {out / 'capacity.md'}" in printed and f"html: {out / 'capacity.html'}" in printed
    assert "| softmax | 0.125 ± 0.000 ≈ | **92.0 ± 2.0** ★ | 92.0 | 1.50 |" in (out / "capacity.md").read_text()
    assert "data:image/png;base64," in (out / "capacity.html").read_text()
    assert not (out / "bench.md").exists()  # no bench records, no bench report
    assert main(["report", str(tmp_path / "missing.jsonl"), "--out-dir", str(out)]) == 2


def test_suite_cli_prints_the_records(tmp_path, capsys):
    from lightformer.cli import main

    out = tmp_path / "cap.jsonl"
    argv = ["suite", "--tasks", "mqar", "--mixers", "linformer", "--seeds", "0,1", "--max-steps", "3",
            "--task-option", "mqar.seq_len=32", "--task-option", "mqar.vocab_size=32", "--model", "dim=32",
            "--option", "linformer.proj_len=8", "--lrs", "0.001,0.01", "--eval-n", "32", "--threads", "1",
            "--train", "batch_size=16", "--out", str(out), "--no-progress", "--json",
            "--report-dir", str(tmp_path / "lb")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"2 cells -> {out}: 2 unsupported"
    assert lines[1].startswith("leaderboard: ")
    recs = [json.loads(line) for line in lines[2:]]
    assert [(r["kind"], r["status"], r["mixer"], r["seed"]) for r in recs] == [
        ("capacity", "unsupported", "linformer", 0), ("capacity", "unsupported", "linformer", 1)]
    r = recs[0]
    assert r["task_options"] == {"seq_len": 32, "vocab_size": 32} and r["model"]["dim"] == 32
    assert r["model"]["max_len"] == 32 and r["mixer_options"]["proj_len"] == 8
    assert r["lrs"] == [0.001, 0.01] and r["eval_n"] == 32 and r["train"]["max_steps"] == 3
    assert r["train"]["batch_size"] == 16
    assert load_records(out) == recs
    assert "mqar / linformer / seed 0: unsupported" in captured.err
    assert (tmp_path / "lb" / "capacity.md").exists()


@pytest.mark.parametrize("extra, named", [
    (["--tasks", "nope", "--max-steps", "3"], "unknown task 'nope'"),
    (["--tasks", "mqar", "--mixers", "nope", "--max-steps", "3"], "unknown mixer 'nope'"),
    (["--tasks", "lm"], "--budget"),
    (["--tasks", "mqar", "--budget", "soon"], "'soon'"),
    (["--tasks", "mqar", "--max-steps", "3", "--model", "dim"], "--model 'dim'"),
    (["--tasks", "mqar", "--max-steps", "3", "--train", "batch_size"], "--train 'batch_size'"),
    (["--tasks", "mqar", "--max-steps", "3", "--train", "max_steps=4"], "max_steps (give --max-steps)"),
])
def test_suite_cli_bad_input_exits_2(tmp_path, capsys, extra, named):
    from lightformer.cli import main

    out = tmp_path / "cap.jsonl"
    assert main(["suite", *extra, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err
    assert not out.exists()


# -- advise(task=...) --------------------------------------------------------------------------------------------

def bench(mixer, t, time_ms, mem_mib):
    return {"kind": "bench", "impl": "lightformer", "label": mixer, "mixer": mixer, "options": {}, "seq_len": t,
            "batch": 1, "dim": 64, "heads": 4, "dtype": "fp32", "mode": "fwd+bwd", "causal": True, "threads": 2,
            "status": "ok", "reason": None, "time_ms": time_ms, "mem_mib": mem_mib}


ADVISE = [
    bench("softmax", 64, 10.0, 50.0), bench("softmax", 512, 100.0, 400.0),
    bench("sliding_window", 64, 12.0, 40.0), bench("sliding_window", 512, 60.0, 100.0),
    bench("linear", 64, 8.0, 30.0), bench("linear", 512, 40.0, 80.0),
    cap("mqar", "softmax", 0, 0.90), cap("mqar", "softmax", 1, 0.70),
    cap("mqar", "sliding_window", 0, 0.85), cap("mqar", "sliding_window", 1, 0.85),
    cap("mqar", "linear", 0, 0.50), cap("mqar", "linear", 1, status="oom"),
    cap("icl_regression", "linear", 0, 0.01),  # another task: not read for mqar
]


def test_advise_ranks_by_the_task_accuracy():
    from lightformer.bench.advise import advise

    a = advise(ADVISE, seq_len=64, causal=True, task="mqar")
    assert [c.mixer for c in a.picks] == ["sliding_window", "softmax", "linear"]  # higher accuracy first
    by = {c.mixer: c for c in a.picks}
    assert by["softmax"].quality == pytest.approx(0.80)  # the mean over seeds, not the latest seed
    assert by["sliding_window"].quality == pytest.approx(0.85)
    assert by["linear"].quality == pytest.approx(0.50)  # the oom seed does not count
    assert all(c.quality_metric == "test_accuracy" for c in a.picks)
    assert by["softmax"].quality_note == " on mqar at T=32 over 2 seed(s)"  # 2x from 64: not far
    assert by["linear"].quality_note == " on mqar at T=32 over 1 seed(s)"
    assert by["softmax"].measured_len == 64 and by["softmax"].time_ms == 10.0
    text = a.format()
    assert "quality: mqar (suite)" in text
    assert "1. sliding_window: 12 ms, 40 MiB at T=64 (fwd+bwd, fp32), test_accuracy 0.85 on mqar at T=32" in text
    assert "linformer: not causal" in text


def test_advise_notes_capacity_measured_far_from_the_length():
    from lightformer.bench.advise import advise

    a = advise(ADVISE, seq_len=512, causal=True, task="mqar")
    assert [c.mixer for c in a.picks] == ["sliding_window", "softmax", "linear"]
    for c in a.picks:
        assert c.quality_note.endswith("; measured far from T=512, so it may not hold there")
    assert "measured far from T=512" in a.format()
    # at T=128 the capacity's T=32 is exactly 4x away: not flagged
    near = advise(ADVISE, seq_len=128, causal=True, task="mqar")
    assert near.picks and not any("far from" in c.quality_note for c in near.picks)
    # a task without capacity records: no quality, ranked by time
    none = advise(ADVISE, seq_len=64, causal=True, task="listops")
    assert [c.mixer for c in none.picks] == ["linear", "softmax", "sliding_window"]
    assert all(c.quality is None for c in none.picks)


def test_lra_tasks_are_quoted_next_to_lra_table_1(tmp_path):
    recs = [cap("listops", "softmax", 0, 0.37, seq_len=1999), cap("listops", "softmax", 1, 0.39, seq_len=1999),
            cap("listops", "aft_simple", 0, 0.20, seq_len=1999)]
    md = write_leaderboard(recs, tmp_path)["markdown"].read_text()
    lines = md.splitlines()
    start = lines.index("## Long Range Arena tasks next to LRA Table 1")
    lra = [line for line in lines[start:] if line.startswith("|")]
    assert lra[0] == "| mixer | LRA model | listops: ours / LRA (%) |"
    # softmax is LRA's Transformer (36.37 on ListOps); AFT is not in Table 1
    assert lra[2:] == ["| aft_simple | — | 20.0 |", "| softmax | Transformer | 38.0 ± 1.0 / 36.37 |"]


def test_state_size_is_measured_for_decoders_and_matches_zoology():
    """Decoding mixers are counted from their prefilled State; the values equal Zoology's formulas."""
    d, h, t = 64, 2, 64
    assert state_size("softmax", {}, dim=d, num_heads=h, seq_len=t) == 2 * t * d
    assert state_size("sliding_window", {"window": 16}, dim=d, num_heads=h, seq_len=t) == 2 * 16 * d
    assert state_size("linear", {}, dim=d, num_heads=h, seq_len=t) == h * (32 * 32 + 32)
    assert state_size("linear_relu", {"conv_kernel": 5}, dim=d, num_heads=h, seq_len=t) == h * (32 * 32 + 32) + 4 * d
    assert state_size("performer", {"num_features": 64}, dim=d, num_heads=h, seq_len=t) == h * (64 * 32 + 64)
    assert state_size("aft_simple", {}, dim=d, num_heads=h, seq_len=t) == 3 * d
    assert state_size("bigbird", {}, dim=d, num_heads=h, seq_len=t) == 2 * t * d  # a decoder's KV cache
    assert state_size("hyena", {}, dim=d, num_heads=h, seq_len=t) == t * d  # no finite state: its input history
    assert state_size("mamba", {"d_state": 16}, dim=d, num_heads=h, seq_len=t) == 2 * d * (16 + 3)  # h + conv window


def test_header_gives_each_setting_of_a_task_its_own_line():
    a = cap("mqar", "softmax", 0, 0.9)
    b = dict(cap("mqar", "softmax", 0, 0.8, lrs=(1e-2,)), label="lr 1e-2")
    c = dict(cap("mqar", "linear", 0, 0.5, lrs=(1e-2,)), label="lr 1e-2")
    lines = header_lines([a, b, c])
    mqar = [line for line in lines if line.startswith("- **mqar**")]
    assert mqar == [
        "- **mqar** (num_kv_pairs=4, seq_len=32, vocab_size=32): 2 layers × width 64, 2 heads (68,608 parameters); "
        "batch 16; budget ≤ 3 steps per learning rate, lr ∈ {0.001, 0.03} chosen on validation (32 examples); "
        "seeds [0] — runs without a label",
        "- **mqar** (num_kv_pairs=4, seq_len=32, vocab_size=32): 2 layers × width 64, 2 heads "
        "(68,000–68,608 parameters); batch 16; budget ≤ 3 steps per learning rate, lr ∈ {0.01} chosen on "
        "validation (32 examples); seeds [0] — runs **lr 1e-2**"]
    assert header_lines([a])[2].endswith("seeds [0]")  # one setting: no run list
    stopped = cap("mqar", "softmax", 0, 0.9)
    stopped["train"] = {**stopped["train"], "stop_at": 0.99, "eval_interval": 100}
    assert "budget ≤ 3 steps per learning rate (stopped once validation reaches 0.99, checked every 100 steps), " \
        "lr ∈" in header_lines([stopped])[2]


def test_a_seed_rerun_at_another_configuration_replaces_the_old_record():
    old = dict(cap("mqar", "softmax", 0, status="timeout"), timestamp="2026-01-01T00:00:00+00:00")
    new = dict(cap("mqar", "softmax", 0, 0.9), model={**MODEL, "num_heads": 32},
               timestamp="2026-01-02T00:00:00+00:00")
    other = dict(cap("mqar", "softmax", 1, 0.7), timestamp="2025-12-31T00:00:00+00:00")
    sm = entries([new, old, other])["mqar"]["softmax"]  # file order is not time order
    assert sorted(sm.values) == [0.7, 0.9] and sorted(sm.statuses) == ["ok", "ok"]


def test_header_names_what_a_label_and_an_architecture_change():
    a, b = cap("mqar", "softmax", 0, 0.9), cap("mqar", "linear", 0, 0.5)
    h3 = dict(cap("mqar", "softmax", 0, 0.3), mixer="h3", model={**MODEL, "num_heads": 32})
    pm = dict(cap("mqar", "softmax", 0, 0.3), mixer="persistent_memory")
    pm16 = dict(pm, mixer_options={"num_memory": 16}, label="N=16")
    lines = header_lines([a, b, h3, pm, pm16])
    assert "  - label **N=16**: option.num_memory=16" in lines  # against its own unlabelled runs, not h3's heads
    assert "  - h3: num_heads=32" in lines
    assert not any(line.startswith("  - softmax") or line.startswith("  - linear") for line in lines)


def test_point_labels_of_a_cluster_do_not_overlap():
    anchors = [(100.0, 200.0), (102.0, 200.0), (101.0, 199.0), (300.0, 50.0), (103.0, 201.0)]
    texts = ["softmax", "deltanet", "gated_deltanet", "poolformer", "mlstm"]
    offsets = label_offsets(anchors, texts)
    assert offsets[3] == (LABEL_DX, LABEL_DY)  # alone: the default place
    boxes = [(x + dx, y + dy, x + dx + CHAR_W * len(t), y + dy + LABEL_H)
             for (x, y), (dx, dy), t in zip(anchors, offsets, texts)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert len({dy for _, dy in offsets[:3] + offsets[4:]}) == 4  # the cluster's labels on four lines


# -- devices ----------------------------------------------------------------------------------------------------
def test_device_is_recorded_and_keys_only_non_cpu_cells():
    cell, = mqar_cells(["sliding_window"])
    assert cell.device == "cpu"
    assert "device" not in json.loads(cell.key)  # keys of the records measured before --device are unchanged
    assert json.loads(dataclasses.replace(cell, device="cuda").key)["device"] == "cuda"
    rec = run(cell)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_suite_device_cuda_without_cuda_names_the_flag(tmp_path, capsys):
    from lightformer.cli import main

    argv = ["suite", "--tasks", "mqar", "--mixers", "softmax", "--max-steps", "1", "--device", "cuda",
            "--out", str(tmp_path / "cap.jsonl"), "--no-progress"]
    assert main(argv) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "cap.jsonl").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_cell_trains_and_evaluates_on_the_gpu():
    cell, = mqar_cells(["sliding_window"], device="cuda")
    rec = run(cell)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["device"] == "cuda" and 0.0 <= rec["value"] <= 1.0
