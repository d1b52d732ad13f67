"""``advise`` on synthetic results: budgets, capabilities, ranking, ties, extrapolation, sizes."""

from __future__ import annotations

import argparse
import json

import pytest

from lightformer.bench import advise
from lightformer.bench.units import parse_size_mib


def rec(mixer, t, time_ms, mem_mib, *, status="ok", mode="fwd+bwd", causal=False, options=None, dtype="fp32"):
    return {"kind": "bench", "impl": "lightformer", "label": mixer, "mixer": mixer, "options": options or {},
            "seq_len": t, "batch": 1, "dim": 64, "heads": 4, "dtype": dtype, "mode": mode, "causal": causal,
            "threads": 2, "status": status, "reason": None if status == "ok" else "x",
            "time_ms": time_ms if status == "ok" else None, "mem_mib": mem_mib if status == "ok" else None}


def quality(mixer, bpc, options=None):
    return {"kind": "quality", "mixer": mixer, "options": options or {}, "val_bpc": bpc, "val_loss": bpc * 0.69,
            "data": "tinyshakespeare", "seconds": 10.0}


RECORDS = [
    rec("softmax", 4096, 300.0, 3000.0), rec("softmax", 4096, 250.0, 2500.0, causal=True),
    rec("tiled_softmax", 4096, 450.0, 500.0), rec("tiled_softmax", 4096, 400.0, 450.0, causal=True),
    rec("sliding_window", 2048, 40.0, 90.0), rec("sliding_window", 8192, 160.0, 300.0),
    rec("sliding_window", 8192, 150.0, 280.0, causal=True),
    rec("linformer", 4096, 90.0, 200.0), rec("performer", 4096, 700.0, 150.0),
    quality("softmax", 2.10), quality("tiled_softmax", 2.10), quality("sliding_window", 2.30),
    quality("linformer", 2.50),
]


def names(items):
    return [c.mixer for c in items]


def test_budgets_are_never_exceeded():
    a = advise(RECORDS, seq_len=4096, max_memory_mib=1024, max_latency_ms=500)
    assert "softmax" not in names(a.picks) and "performer" not in names(a.picks)
    why = {c.mixer: c.reason for c in a.rejected}
    assert why["softmax"].startswith("over memory") and "3000 MiB > 1024 MiB" in why["softmax"]
    assert why["performer"].startswith("over latency")
    for c in a.picks:
        assert c.mem_mib <= 1024 and c.time_ms <= 500
    # ranked by quality first: tiled_softmax (2.10) before sliding_window (2.30) before linformer (2.50)
    assert names(a.picks) == ["tiled_softmax", "sliding_window", "linformer"]
    # nearest measured T >= request: sliding_window's T=8192 record, not the 2048 one
    sw = a.picks[1]
    assert sw.measured_len == 8192 and sw.time_ms == 160.0 and not sw.extrapolated
    assert all(c.pareto for c in a.picks)  # each is best on one axis
    text = a.format()
    assert "tiled_softmax: 450 ms, 500 MiB at T=4096 (fwd+bwd, fp32), val_bpc 2.1; Pareto-optimal" in text
    assert "softmax: over memory" in text


def test_causal_request_rejects_non_causal_mixers():
    from lightformer import MIXERS

    a = advise(RECORDS, seq_len=4096, causal=True)
    for c in a.picks:
        assert MIXERS.get(c.mixer).capabilities.causal
    if "linformer" in MIXERS and not MIXERS.get("linformer").capabilities.causal:
        assert "not causal" in {c.mixer: c.reason for c in a.rejected}["linformer"]
    assert names(a.picks)[:2] == ["softmax", "tiled_softmax"]  # same quality: faster first


def test_ties_broken_by_memory_then_name():
    recs = [rec("tiled_softmax", 1024, 100.0, 50.0), rec("softmax", 1024, 100.0, 80.0),
            rec("sliding_window", 1024, 100.0, 50.0)]
    a = advise(recs, seq_len=1024)
    measured = [c for c in a.picks if c.time_ms is not None]
    assert names(measured) == ["sliding_window", "tiled_softmax", "softmax"]
    assert [c.pareto for c in measured] == [True, True, False]


def test_unmeasured_failed_and_extrapolated():
    recs = [rec("softmax", 1024, 100.0, 100.0), rec("tiled_softmax", 4096, 0, 0, status="oom"),
            rec("sliding_window", 1024, 10.0, 20.0)]
    a = advise(recs, seq_len=4096, max_latency_ms=1000)
    why = {c.mixer: c.reason for c in a.rejected}
    assert why["tiled_softmax"].startswith("oom at T=4096")
    assert "softmax" in why and "over latency (1600 ms" in why["softmax"] and "extrapolated" in why["softmax"]
    sw = next(c for c in a.picks if c.mixer == "sliding_window")
    from lightformer import MIXERS
    linear = MIXERS.get("sliding_window").capabilities.linear_in_length
    assert sw.extrapolated and sw.time_ms == pytest.approx(10.0 * (4 if linear else 16))
    assert "extrapolated from T=1024" in a.format()
    causal_only = {m for m in MIXERS.names() if not MIXERS.get(m).capabilities.non_causal}
    assert {m for m, r in why.items() if r.startswith("causal-only")} == causal_only
    assert all(r.startswith("unmeasured") for m, r in why.items()
               if m not in ("tiled_softmax", "softmax", *causal_only))


def test_parse_sizes():
    assert parse_size_mib("2GiB") == 2048 and parse_size_mib("512MiB") == 512
    assert parse_size_mib("1.5G") == 1536 and parse_size_mib("300") == 300
    assert parse_size_mib("1GB") == pytest.approx(1e9 / 2**20)
    with pytest.raises(ValueError):
        parse_size_mib("lots")


def test_advise_cli(tmp_path, capsys):
    from lightformer.bench.cli import add_advise_parser

    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    parser = argparse.ArgumentParser()
    add_advise_parser(parser.add_subparsers())
    args = parser.parse_args(["advise", "--seq-len", "4096", "--max-memory", "1GiB", "--max-latency-ms", "500",
                              "--results", str(path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "1. tiled_softmax" in out and "softmax: over memory" in out
    args = parser.parse_args(["advise", "--seq-len", "4096", "--max-memory", "1MiB", "--results", str(path)])
    assert args.func(args) == 1  # nothing fits
