"""Reports from synthetic records: Markdown (machine line, ratios, crossover), PNGs, self-contained HTML."""

from __future__ import annotations

import argparse
import pathlib
import subprocess

import pytest

from lightformer.bench import write_report
from lightformer.bench.table import build_tables, crossover

CHROMIUM = pathlib.Path("/usr/bin/chromium")


def rec(impl, mixer, t, time_ms, mem, status="ok", options=None):
    return {"kind": "bench", "impl": impl, "label": mixer if impl == "lightformer" else impl, "mixer": mixer,
            "options": options or {}, "seq_len": t, "batch": 1, "dim": 64, "heads": 4, "dtype": "fp32",
            "mode": "fwd+bwd", "causal": True, "threads": 2, "status": status, "time_ms": time_ms,
            "mem_mib": mem, "cpu": "Test CPU 9000", "torch": "2.x", "git_commit": "abc1234",
            "timestamp": "2025-01-02T03:04:05+00:00"}


W = {"window": 256}
RECORDS = [
    rec("sdpa", "softmax", 512, 10.0, 20.0), rec("sdpa", "softmax", 1024, 40.0, 60.0),
    rec("sdpa", "softmax", 2048, 160.0, 200.0), rec("sdpa", "softmax", 4096, 640.0, 700.0),
    rec("lightformer", "sliding_window", 512, 12.0, 15.0, options=W),
    rec("lightformer", "sliding_window", 1024, 30.0, 25.0, options=W),
    rec("lightformer", "sliding_window", 2048, 60.0, 45.0, options=W),
    rec("lightformer", "sliding_window", 4096, 120.0, 90.0, options=W),
    rec("local_attention", "sliding_window", 1024, 60.0, 50.0, options=W),
    rec("lightformer", "softmax", 512, 11.0, 20.0), rec("lightformer", "softmax", 1024, 44.0, 60.0),
    rec("lightformer", "softmax", 2048, 150.0, 200.0), rec("lightformer", "softmax", 4096, None, None, "oom"),
    {"kind": "quality", "mixer": "softmax", "options": {}, "val_bpc": 2.0, "val_loss": 1.4, "data": "x",
     "seconds": 1.0},
]


def test_crossover():
    sdpa = {512: 10.0, 1024: 40.0, 2048: 160.0}
    assert crossover({512: 12.0, 1024: 30.0, 2048: 60.0}, sdpa) == 1024
    assert crossover({512: 5.0, 1024: 30.0, 2048: 170.0}, sdpa) is None  # not faster at the largest T
    assert crossover({512: 5.0, 1024: 50.0, 2048: 60.0}, sdpa) == 2048


def test_decode_tables_compare_with_the_kv_cache():
    """No peer decodes: a decode group's baseline is lightformer's softmax (KV cache), and its crossover is the
    context from which a recurrent mixer's per-token latency beats the cache's."""
    recs = []
    for t, kv, rnn in ((512, 1.0, 2.0), (2048, 2.0, 2.1), (8192, 6.0, 2.2)):
        recs += [dict(rec("lightformer", "softmax", t, kv, 1.0), mode="decode", state_mib=t / 256),
                 dict(rec("lightformer", "mamba", t, rnn, 1.0), mode="decode", state_mib=0.074)]
    (table,) = build_tables(recs)
    assert table.header[-1] == "crossover vs softmax (KV cache)"
    rows = {row[0]: row for row in table.rows}
    assert table.rows[0][0] == "softmax" and rows["softmax"][-1] == "— (baseline)"
    assert rows["mamba"][-1] == "T=8192"
    assert "×0.37 softmax" in rows["mamba"][3] and "state 0.074 MiB" in rows["mamba"][3]
    assert rows["softmax"][3].startswith("6 ms / state 32 MiB")


def test_table_ratios_and_crossover():
    (table,) = build_tables(RECORDS)
    assert table.header == ["implementation", "T=512", "T=1024", "T=2048", "T=4096", "crossover vs SDPA"]
    rows = {r[0]: r for r in table.rows}
    sw = rows["sliding_window [window=256]"]
    assert sw[2] == "30 ms / 25 MiB · ×0.75 SDPA · ×0.50 local_attention" and sw[-1] == "T=1024"
    assert rows["softmax"][4] == "oom" and rows["softmax"][-1] == "T=2048"
    assert rows["sdpa (torch, peer)"][-1] == "— (baseline)"
    assert rows["local_attention (peer of sliding_window) [window=256]"][1] == "—"
    assert table.rows[0][0].startswith("sdpa")


def test_cells_say_single_runs_and_timeout_limits():
    one = dict(rec("lightformer", "softmax", 8192, 900.0, 300.0), repeats=1)
    slow = dict(rec("lightformer", "softmax", 16384, None, None, "timeout"), elapsed_s=180.2)
    (table,) = build_tables(RECORDS + [one, slow])
    row = {r[0]: r for r in table.rows}["softmax"]
    assert row[5].startswith("900 ms / 300 MiB (1 run)")
    assert row[6] == "timeout (> 180 s)"


def test_write_report_files(tmp_path):
    paths = write_report(RECORDS, tmp_path / "docs")
    md = paths["markdown"].read_text()
    assert md.splitlines()[0] == "Machine: Test CPU 9000 · 2 threads · torch 2.x · git abc1234 · 2025-01-02"
    assert "crossover vs SDPA" in md and "| softmax |" in md and "T=1024" in md
    pngs = [p for k, p in paths.items() if k.endswith(".png")]
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "crossover vs SDPA" in page
    assert "src='http" not in page and 'src="http' not in page


def test_report_cli(tmp_path, capsys):
    import json

    from lightformer.bench.cli import add_bench_parser, add_report_parser

    res = tmp_path / "r.jsonl"
    res.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_bench_parser(sub)
    add_report_parser(sub)
    args = parser.parse_args(["report", str(res), "--out-dir", str(tmp_path / "a")])
    assert args.func(args) == 0 and (tmp_path / "a" / "bench.md").exists()
    args = parser.parse_args(["bench", "--report", str(res), "--out-dir", str(tmp_path / "b")])
    assert args.func(args) == 0 and (tmp_path / "b" / "bench.html").exists()


def test_report_of_bench_and_capacity_records_keeps_both(tmp_path):
    """One results file with both kinds (e.g. docs/results/blocks.jsonl): the bench report and the leaderboard are
    one Markdown document, neither overwrites the other."""
    import json

    from lightformer.bench.cli import add_report_parser

    cap = {"kind": "capacity", "task": "lm", "mixer": "softmax", "label": "deepnorm", "seed": 0, "status": "ok",
           "metric": "bpc", "value": 3.0, "model": {"block": "deepnorm"}, "train": {}, "task_options": {},
           "mixer_options": {}, "lrs": [0.01], "params": 10, "state_size": None, "seq_len": 64,
           "eval_n": 8, "lr_grid": [{"lr": 0.01, "val": 3.0, "history": [{"step": 10, "val_bpc": 3.1}, {"step": 20, "val_bpc": 3.0}]}]}
    res = tmp_path / "r.jsonl"
    res.write_text("\n".join(json.dumps(r) for r in [*RECORDS, cap]) + "\n")
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(res), "--out-dir", str(tmp_path), "--name", "blocks"])
    assert args.func(args) == 0
    text = (tmp_path / "blocks.md").read_text()
    assert "sliding_window" in text  # the bench tables
    assert "## Training runs" in text and "softmax [deepnorm]" in text  # and the leaderboard
    assert (tmp_path / "blocks_capacity.html").exists()


def test_html_renders_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed at /usr/bin/chromium")
    import matplotlib.image as mpimg
    import numpy as np

    paths = write_report(RECORDS, tmp_path / "docs")
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
                    paths["html"].resolve().as_uri()], check=True, timeout=120, capture_output=True)
    pixels = mpimg.imread(shot)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 1
