"""``compare``: same model, data, seeds and budget per mixer; LM quality over seeds, a recall probe, bench records in
one file; ties and the Pareto front; the verdict; and ``advise`` reading what compare wrote."""

from __future__ import annotations

import pytest

from lightformer.bench.advise import advise
from lightformer.bench.compare import recall_length, run_compare
from lightformer.bench.results import load_records
from lightformer.bench.verdict import pareto_front, ranking, tied, verdict
from lightformer.tasks.text import stdlib_bytes


def test_pareto_front_follows_each_metric_direction():
    rows = [{"mixer": "a", "val_bpc": 2.0, "time_ms": 10.0}, {"mixer": "b", "val_bpc": 1.5, "time_ms": 30.0},
            {"mixer": "c", "val_bpc": 2.5, "time_ms": 40.0}, {"mixer": "d", "val_bpc": None, "time_ms": 5.0}]
    assert pareto_front(rows, ("val_bpc", "time_ms")) == {"a", "b", "d"}
    acc = [{"mixer": "a", "accuracy": 0.9, "time_ms": 10.0}, {"mixer": "b", "accuracy": 0.5, "time_ms": 20.0}]
    assert pareto_front(acc, ("accuracy", "time_ms")) == {"a"}  # higher accuracy and faster dominates


def test_ties_inside_the_seed_spread():
    # tied when |Δ| <= 2·sqrt(sa² + sb²): 0.04 <= 0.102; 0.04 > 0.028; 0.068 <= 0.107 (compare's 45 s default:
    # sliding_window 3.050 ± 0.021 against softmax 3.118 ± 0.049); 0.49 > 0.057
    assert tied((2.00, 0.05), (2.04, 0.01)) and not tied((2.00, 0.01), (2.04, 0.01))
    assert tied((3.050, 0.021), (3.118, 0.049)) and not tied((3.050, 0.021), (3.540, 0.020))
    rows = [{"mixer": "a", "val_bpc": 2.00, "val_bpc_spread": 0.05}, {"mixer": "b", "val_bpc": 2.04,
            "val_bpc_spread": 0.01}, {"mixer": "c", "val_bpc": 2.50, "val_bpc_spread": 0.02}]
    order, ties = ranking(rows, "val_bpc")
    assert order == ["a", "b", "c"] and ties == {"a": False, "b": True, "c": False}
    rows[0]["mixer"] = "softmax"
    text = verdict(rows, report_len=4096, recall_len=None)
    assert text.startswith("Verdict: best LM quality: **softmax** (2.000 ± 0.050 bits/byte), tied within the seed "
                           "spread with b") and "the exact baseline `softmax` is 1st of 3" in text
    rows = [{"mixer": "x", "recall": 0.99, "recall_spread": 0.0}, {"mixer": "y", "recall": 0.40,
                                                                    "recall_spread": 0.1}]
    assert ranking(rows, "recall")[0] == ["x", "y"]  # recall: higher is better


def test_recall_length_grows_with_the_budget():
    assert recall_length(20, 4096) == 64 and recall_length(40, 4096) == 128 and recall_length(80, 4096) == 256
    assert recall_length(10_000, 512) == 512 and recall_length(1, 4096) == 64


def test_compare_end_to_end(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_bytes(stdlib_bytes()[:60_000])
    kw = dict(data=str(data), tokenizer="byte", budget_s=1.5, seeds=[0, 1], recall_budget_s=1.0, recall_len=32,
              seq_lens=[64], out_dir=str(tmp_path / "cmp"), repeats=1, timeout_s=120, log=lambda s: None)
    out = run_compare(["softmax", "sliding_window"], **kw)
    records = load_records(out["results"])
    quality = [r for r in records if r["kind"] == "quality"]
    assert [(q["mixer"], q["seed"]) for q in quality] == [("softmax", 0), ("softmax", 1), ("sliding_window", 0),
                                                          ("sliding_window", 1)]
    for q in quality:
        assert 3.0 < q["val_bpc"] < 8.5 and q["steps"] > 0 and q["seconds"] >= 1.5 and q["history"]
        assert q["data_sha256"] == quality[0]["data_sha256"] and q["schema"] == 2
    assert quality[0]["position"] == "rope" and quality[2]["options"] == {"window": 64}
    recall = [r for r in records if r["kind"] == "capacity"]
    assert len(recall) == 4 and all(r["status"] == "ok" and r["task"] == "mqar" and r["seq_len"] == 32
                                    and 0.0 <= r["value"] <= 1.0 for r in recall)
    bench = [r for r in records if r["kind"] == "bench"]
    assert {(r["impl"], r["mixer"]) for r in bench} >= {("lightformer", "softmax"), ("lightformer", "sliding_window"),
                                                       ("sdpa", "softmax")}
    rows = {r["mixer"]: r for r in out["rows"]}
    assert set(rows) == {"softmax", "sliding_window"}
    for r in rows.values():
        vals = [q["val_bpc"] for q in quality if q["mixer"] == r["mixer"]]
        assert r["val_bpc"] == pytest.approx(sum(vals) / 2) and r["val_bpc_spread"] == pytest.approx(
            abs(vals[0] - vals[1]) / 2) and r["seeds"] == 2 and r["time_ms"] > 0
    assert out["verdict"].startswith("Verdict: best LM quality:")
    text = out["markdown"].read_text()
    assert text.splitlines()[4].startswith("Verdict:"), "the report leads with the verdict"
    assert "| softmax |" in text and "Machine:" in text
    assert (tmp_path / "cmp" / "compare_front.png").stat().st_size and (tmp_path / "cmp" / "compare_curves.png").stat().st_size
    picks = advise(records, seq_len=64, causal=True).picks
    assert picks and all(p.val_bpc is not None for p in picks if p.mixer in rows)
    by_task = advise(records, seq_len=4096, causal=True, task="mqar")
    noted = [p for p in by_task.picks if p.mixer in rows]
    assert noted and all(p.quality_metric == "test_accuracy" and "far from T=4096" in p.quality_note for p in noted)
    # a second run reuses the measured quality and recall instead of training again
    again = run_compare(["softmax"], **kw)
    kinds = [r["kind"] for r in load_records(again["results"])]
    assert kinds.count("quality") == 4 and kinds.count("capacity") == 4


def test_compare_rejects_non_causal_mixers(tmp_path):
    with pytest.raises(ValueError, match="mixers: 'linformer' cannot be causal"):
        run_compare(["linformer"], out_dir=str(tmp_path))
