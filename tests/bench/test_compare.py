"""``compare``: same model, same data, same budget per mixer; quality + bench records in one file; Pareto front;
and ``advise`` reading what compare wrote."""

from __future__ import annotations

import json

import pytest

from lightformer.bench.advise import advise
from lightformer.bench.compare import pareto_front, run_compare
from lightformer.bench.results import load_records
from lightformer.tasks.text import stdlib_bytes


def test_pareto_front_minimises_every_key():
    rows = [{"mixer": "a", "val_bpc": 2.0, "time_ms": 10.0}, {"mixer": "b", "val_bpc": 1.5, "time_ms": 30.0},
            {"mixer": "c", "val_bpc": 2.5, "time_ms": 40.0}, {"mixer": "d", "val_bpc": None, "time_ms": 5.0}]
    assert pareto_front(rows, ("val_bpc", "time_ms")) == {"a", "b", "d"}


def test_compare_end_to_end(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_bytes(stdlib_bytes()[:60_000])
    out = run_compare(["softmax", "sliding_window"], data=str(data), tokenizer="byte", budget_s=2.0,
                      seq_lens=[64], out_dir=str(tmp_path / "cmp"), repeats=1, timeout_s=120, log=lambda s: None)
    records = load_records(out["results"])
    quality = [r for r in records if r["kind"] == "quality"]
    assert [q["mixer"] for q in quality] == ["softmax", "sliding_window"]
    for q in quality:
        assert 0 < q["val_bpc"] < 9 and q["steps"] > 0 and q["seconds"] >= 2.0
        assert q["data_sha256"] == quality[0]["data_sha256"]
    assert quality[1]["options"] == {"window": 64}
    bench = [r for r in records if r["kind"] == "bench"]
    assert {(r["impl"], r["mixer"]) for r in bench} >= {("lightformer", "softmax"), ("lightformer", "sliding_window"),
                                                       ("sdpa", "softmax")}
    assert all(r["status"] == "ok" and r["causal"] for r in bench)
    rows = {r["mixer"]: r for r in out["rows"]}
    assert set(rows) == {"softmax", "sliding_window"}
    assert any(r["pareto"] for r in rows.values())
    assert all(r["time_ms"] > 0 and r["val_bpc"] > 0 for r in rows.values())
    text = out["markdown"].read_text()
    assert "| softmax |" in text and "Machine:" in text and (tmp_path / "cmp" / "compare_front.png").stat().st_size
    picks = advise(records, seq_len=64, causal=True).picks
    assert picks and all(p.val_bpc is not None for p in picks if p.mixer in rows)
    # a second run reuses the measured quality instead of training again
    again = run_compare(["softmax"], data=str(data), tokenizer="byte", budget_s=2.0, seq_lens=[64],
                        out_dir=str(tmp_path / "cmp"), repeats=1, log=lambda s: None)
    assert len([r for r in load_records(again["results"]) if r["kind"] == "quality"]) == 2


def test_compare_rejects_non_causal_mixers(tmp_path):
    with pytest.raises(ValueError, match="mixers: 'linformer' cannot be causal"):
        run_compare(["linformer"], out_dir=str(tmp_path))
