"""``lightformer bench --checkpoints``: trained checkpoints measured in subprocesses against the first one, and the
compression report built from their records (sizes, ratios, loss deltas and Pareto fronts with real numbers)."""

from __future__ import annotations

import json

import pytest

from lightformer.bench.checkpoint_cell import CheckpointCell, checkpoint_cells, measure
from lightformer.bench.compression_report import build_groups, pareto, rows, write_compression_report
from lightformer.cli import main
from lightformer.compress import compress_checkpoint
from lightformer.train.checkpoint import load_trained
from lightformer.train.evaluate import evaluate


def test_pareto_front_by_hand():
    assert pareto([(1, 2), (2, 1), (2, 2)]) == [True, True, False]
    assert pareto([(1, 1), (1, 1)]) == [True, True]  # equal points do not dominate each other
    assert pareto([(3, 3), (1, 1), (2, 0.5)]) == [False, True, True]


def test_cells_name_runs_and_refuse_bad_input(trained, tmp_path):
    cells = checkpoint_cells([str(trained)], modes=["fwd"], seq_len=16, batch=2, threads=1)
    assert [(c.label, c.mode, c.baseline) for c in cells] == [(trained.name, "fwd", str(trained))]
    with pytest.raises(ValueError, match="checkpoints"):
        checkpoint_cells([])
    with pytest.raises(FileNotFoundError):
        checkpoint_cells([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="labels"):
        checkpoint_cells([str(trained), str(trained)])  # two rows named alike
    with pytest.raises(ValueError, match="mode"):
        CheckpointCell(checkpoint=str(trained), label="a", baseline=str(trained), mode="fwd+bwd")
    with pytest.raises(ValueError, match="seq_len"):
        CheckpointCell(checkpoint=str(trained), label="a", baseline=str(trained), mode="fwd", seq_len=0)


def test_measure_in_process_matches_the_checkpoint(trained):
    model, task, run_config, _ = load_trained(trained)
    tc = run_config.train
    want = evaluate(model, task, "val", n=tc.eval_iters * tc.batch_size, batch_size=tc.batch_size)
    cell = CheckpointCell(checkpoint=str(trained), label="fp32", baseline=str(trained), mode="eval")
    rec = measure(cell)
    assert rec["status"] == "ok" and rec["kind"] == "checkpoint" and rec["is_baseline"]
    assert rec["metrics"]["loss"] == pytest.approx(want["loss"], rel=1e-6)
    n = sum(p.numel() for p in model.parameters())
    assert rec["num_params"] == n
    # fp32 tensors: the state dict's bytes are 4 per value (the tied head counted once), plus nothing else
    assert rec["model_mib"] * 2**20 == pytest.approx(4 * n, rel=1e-3)
    assert 0 < rec["blocks_mib"] < rec["model_mib"]
    dec = measure(CheckpointCell(checkpoint=str(trained), label="fp32", baseline=str(trained), mode="decode",
                                 seq_len=8, batch=1, repeats=1, warmup=0))
    assert dec["status"] == "ok" and dec["time_ms"] > 0 and dec["decode_steps"] > 0 and dec["decode_context"] == 8
    # learned positions end at max_len (32 here): the context leaves room for the timed tokens
    full = measure(CheckpointCell(checkpoint=str(trained), label="fp32", baseline=str(trained), mode="decode",
                                  seq_len=32, batch=1, repeats=1, warmup=0))
    assert full["status"] == "ok" and full["decode_context"] == 32 - full["decode_steps"]


def test_bench_checkpoints_cli_and_report(trained, tmp_path):
    pytest.importorskip("torchao", reason="int8 needs the compress extra (torchao)")
    svd = compress_checkpoint(trained, "svd", {"energy": 0.7}, tmp_path / "svd70")
    out = tmp_path / "compression.jsonl"
    code = main(["bench", "--checkpoints", f"{trained},{tmp_path / 'svd70'}", "--labels", "fp32,svd70",
                 "--seq-lens", "16", "--batch", "2", "--threads", "1", "--repeats", "1", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["label"], r["mode"], r["status"]) for r in recs) == sorted(
        (label, mode, "ok") for label in ("fp32", "svd70") for mode in ("eval", "fwd", "decode"))
    by = {(r["label"], r["mode"]): r for r in recs}
    assert by[("svd70", "eval")]["method"] == "svd" and by[("fp32", "eval")]["method"] is None
    assert by[("svd70", "eval")]["metrics"]["loss"] == pytest.approx(svd.metrics_after["loss"], rel=1e-6)
    assert by[("svd70", "eval")]["num_params"] == svd.num_params_after
    # a second run skips measured cells
    assert main(["bench", "--checkpoints", f"{trained},{tmp_path / 'svd70'}", "--labels", "fp32,svd70",
                 "--seq-lens", "16", "--batch", "2", "--threads", "1", "--repeats", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 6

    (group,) = build_groups(recs)
    table = {row[0]: row for row in rows(group)}
    base, small = table["fp32 *(baseline)*"], table["svd70"]
    assert base[3] == "×1.00" and base[10] == "+0.0000"
    ratio = by[("svd70", "eval")]["model_mib"] / by[("fp32", "eval")]["model_mib"]
    assert small[3] == f"×{ratio:.2f}" and ratio < 1
    delta = svd.metrics_after["loss"] - svd.metrics_before["loss"]
    assert small[10] == f"{delta:+.4f}"
    assert small[1] == "svd (energy=0.7, finetune_steps=0)"
    # the smaller model is on the size front whatever its loss; the baseline too when it is the more accurate
    assert "size" in small[11]
    assert ("size" in base[11]) == (delta > 0)

    assert main(["report", str(out), "--out-dir", str(tmp_path / "rep"), "--name", "compression"]) == 0
    md = (tmp_path / "rep" / "compression.md").read_text()
    assert "| svd70 | svd (energy=0.7, finetune_steps=0) |" in md and "T=16, B=2" in md
    assert (tmp_path / "rep" / "compression_pareto.png").stat().st_size > 0
    assert "<table>" in (tmp_path / "rep" / "compression.html").read_text()


def test_bench_checkpoints_refuses_grid_flags(trained, capsys):
    assert main(["bench", "--checkpoints", str(trained), "--mixers", "softmax", "--no-progress"]) == 2
    assert "--mixers cannot be used with --checkpoints" in capsys.readouterr().err
    assert main(["bench", "--checkpoints", str(trained), "--modes", "fwd+bwd", "--no-progress"]) == 2
    assert "choose among eval,fwd,decode" in capsys.readouterr().err
    assert main(["bench", "--checkpoints", str(trained), "--seq-lens", "16,32", "--no-progress"]) == 2
    assert "one shape" in capsys.readouterr().err
    assert main(["bench", "--labels", "a", "--no-progress"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_report_unrelated_groups_and_failures(tmp_path):
    def rec(label, mode, **kw):
        base = {"kind": "checkpoint", "status": "ok", "reason": None, "checkpoint": f"/r/{label}", "label": label,
                "baseline": "/r/base", "is_baseline": label == "base", "mode": mode, "seq_len": 256, "batch": 8,
                "method": None, "method_options": None, "model_mib": 4.0, "file_mib": 4.1, "time_ms": None,
                "metrics": {}, "cpu": "cpu", "threads": 1, "torch": "t", "git_commit": "abc", "timestamp": "2026"}
        base.update(kw)
        return base

    recs = [rec("base", "fwd", time_ms=100.0), rec("base", "eval", metrics={"loss": 1.5}),
            rec("base", "decode", time_ms=2.0),
            rec("q", "fwd", time_ms=150.0, model_mib=1.0, method="int8", method_options={"exclude": []}),
            rec("q", "eval", metrics={"loss": 1.52}, model_mib=1.0, method="int8"),
            rec("q", "decode", status="error", reason="RuntimeError: boom\ntrace", model_mib=None)]
    (group,) = build_groups(recs)
    table = {row[0]: row for row in rows(group)}
    assert table["q"][1] == "int8"  # empty option lists are not shown
    assert table["q"][3] == "×0.25" and table["q"][6] == "×1.50" and table["q"][8] == "—"
    assert table["q"][10] == "+0.0200"
    assert table["q"][11] == "size; decode: error (RuntimeError: boom)"
    assert table["base *(baseline)*"][11] == "size, speed"
    paths = write_compression_report(recs, tmp_path)
    assert "Machine: cpu · 1 threads · torch t · git abc" in paths["markdown"].read_text()


def test_eval_iters_sets_the_validation_size(trained, tmp_path):
    model, task, run_config, _ = load_trained(trained)
    tc = run_config.train
    want = evaluate(model, task, "val", n=1 * tc.batch_size, batch_size=tc.batch_size)
    rec = measure(CheckpointCell(checkpoint=str(trained), label="fp32", baseline=str(trained), mode="eval",
                                 eval_iters=1))
    assert rec["eval_n"] == want["count"] and rec["eval_iters"] == 1
    assert rec["metrics"]["loss"] == pytest.approx(want["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="eval_iters"):
        CheckpointCell(checkpoint=str(trained), label="a", baseline=str(trained), mode="eval", eval_iters=0)
    # eval_iters is part of an eval cell's identity only
    a = CheckpointCell(checkpoint=str(trained), label="a", baseline=str(trained), mode="fwd", eval_iters=1)
    b = CheckpointCell(checkpoint=str(trained), label="a", baseline=str(trained), mode="fwd")
    assert a.key == b.key
    result = compress_checkpoint(trained, "svd", {"energy": 0.7}, tmp_path / "svd", eval_iters=1)
    assert result.metrics_before["loss"] == pytest.approx(want["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="eval_iters"):
        compress_checkpoint(trained, "svd", {"energy": 0.7}, tmp_path / "svd2", eval_iters=0)


def test_suite_checkpoints_puts_a_compressed_model_on_the_leaderboard(trained, tmp_path, capsys):
    from lightformer.bench.checkpoint_capacity import checkpoint_capacity_record
    from lightformer.bench.leaderboard import entries

    compress_checkpoint(trained, "svd", {"energy": 0.7}, tmp_path / "svd70")
    out = tmp_path / "capacity.jsonl"
    assert main(["suite", "--checkpoints", f"{trained},{tmp_path / 'svd70'}", "--eval-n", "32", "--out", str(out),
                 "--no-progress"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in recs] == [trained.name, "svd (energy=0.7, finetune_steps=0)"]
    model, task, _, state = load_trained(tmp_path / "svd70")
    want = evaluate(model, task, "test", n=32, batch_size=8)
    svd = recs[1]
    assert (svd["kind"], svd["status"], svd["task"], svd["mixer"], svd["method"]) == ("capacity", "ok", "lm",
                                                                                      "softmax", "svd")
    assert svd["metric"] == "bpc" and svd["value"] == pytest.approx(want["bpc"], rel=1e-6)
    assert svd["eval_n"] == 32 and svd["steps"] == state["step"] == 80
    assert svd["train"]["max_time"] is None  # seconds when the run had a time budget (suite records' unit)
    assert svd["params"] == sum(p.numel() for p in model.parameters())
    # a second run reads the file instead of evaluating again
    assert main(["suite", "--checkpoints", str(trained), "--eval-n", "32", "--out", str(out), "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 2
    table = entries(recs)["lm"]
    assert set(table) == {f"softmax [{trained.name}]", "softmax [svd (energy=0.7, finetune_steps=0)]"}
    capsys.readouterr()
    assert main(["suite", "--checkpoints", str(trained), "--mixers", "softmax", "--out", str(out)]) == 2
    assert "--mixers cannot be used with --checkpoints" in capsys.readouterr().err
    assert main(["suite", "--out", str(out)]) == 2
    assert "--tasks is required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="eval_n"):
        checkpoint_capacity_record(str(trained), eval_n=0)


def test_report_adds_accuracy_for_a_classifier():
    def rec(label, mode, **kw):
        base = {"kind": "checkpoint", "status": "ok", "reason": None, "checkpoint": f"/r/{label}", "label": label,
                "baseline": "/r/base", "is_baseline": label == "base", "mode": mode, "seq_len": 784, "batch": 8,
                "method": None, "method_options": None, "model_mib": 0.3, "file_mib": 0.3, "time_ms": None,
                "metrics": {}}
        base.update(kw)
        return base

    recs = [rec("base", "fwd", time_ms=300.0), rec("base", "eval", metrics={"loss": 1.0, "accuracy": 0.648}),
            rec("m", "fwd", time_ms=200.0, method="tome", method_options={"r": [392, 0]}),
            rec("m", "eval", metrics={"loss": 1.01, "accuracy": 0.641}, method="tome")]
    (group,) = build_groups(recs)
    from lightformer.bench.compression_report import header

    assert header(group)[-3:] == ("val accuracy %", "Δ points", "front")
    table = {row[0]: row for row in rows(group)}
    assert table["m"][1] == "tome (r=[392, 0])" and table["m"][6] == "×0.67"
    assert table["m"][11:13] == ["64.1", "-0.7"] and table["base *(baseline)*"][11:13] == ["64.8", "+0.0"]
    assert table["m"][13] == "speed"


def test_report_of_checkpoint_and_capacity_records_writes_both(tmp_path):
    ck = {"kind": "checkpoint", "status": "ok", "reason": None, "checkpoint": "/r/base", "label": "base",
          "baseline": "/r/base", "is_baseline": True, "mode": "eval", "seq_len": 784, "batch": 8, "method": None,
          "method_options": None, "model_mib": 0.3, "file_mib": 0.3, "time_ms": None,
          "metrics": {"loss": 1.0, "accuracy": 0.6}}
    from types import SimpleNamespace

    from lightformer.bench.results import capacity_record

    cell = SimpleNamespace(task="mqar", task_options={}, mixer="softmax", mixer_options={}, model={"dim": 64},
                           train={"batch_size": 16, "max_steps": 3}, lrs=(1e-3,), seed=0, eval_n=32, threads=1,
                           label="")
    cap = capacity_record(cell, {"cpu": "cpu"}, status="ok")
    cap.update(metric="accuracy", value=0.9, val_value=0.9, seq_len=32)
    out = tmp_path / "c.jsonl"
    out.write_text(json.dumps(ck) + "\n" + json.dumps(cap) + "\n")
    assert main(["report", str(out), "--out-dir", str(tmp_path), "--name", "compression"]) == 0
    md = (tmp_path / "compression.md").read_text()
    assert md.startswith("# lightformer compression") and "## Test metrics (`suite` records; also " \
        "compression_capacity.html)" in md and "| softmax |" in md
    assert (tmp_path / "compression_capacity.md").exists() and not (tmp_path / "compression_compression.md").exists()


def test_rounds_are_round_robin_and_the_report_takes_their_median(trained):
    cells = checkpoint_cells([str(trained)], modes=["eval", "fwd"], rounds=3, labels=["a"])
    assert [(c.mode, c.round) for c in cells] == [("eval", 0), ("fwd", 0), ("fwd", 1), ("fwd", 2)]
    assert len({c.key for c in cells}) == 4
    with pytest.raises(ValueError, match="rounds"):
        checkpoint_cells([str(trained)], rounds=0)

    def rec(mode, rnd, t):
        return {"kind": "checkpoint", "status": "ok", "reason": None, "checkpoint": "/r/b", "label": "b",
                "baseline": "/r/b", "is_baseline": True, "mode": mode, "seq_len": 8, "batch": 1, "round": rnd,
                "method": None, "method_options": None, "model_mib": 1.0, "file_mib": 1.0, "time_ms": t,
                "metrics": {}}

    # round 1 measured twice: its newer record counts; median of (10, 40, 20) = 20
    (group,) = build_groups([rec("fwd", 0, 10.0), rec("fwd", 1, 30.0), rec("fwd", 2, 20.0), rec("fwd", 1, 40.0)])
    assert group.variants[0].fwd_ms == 20.0 and group.variants[0].num_rounds == 3
    from lightformer.bench.compression_report import _title

    assert _title(group).endswith("median of 3 round-robin rounds")
