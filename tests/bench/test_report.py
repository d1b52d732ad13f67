"""Reports from synthetic records: Markdown (machine line, ratios, crossover), PNGs, self-contained HTML."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess

import pytest

from lightformer.bench import write_report
from lightformer.bench.table import build_tables, crossover

CHROMIUM = pathlib.Path("/usr/bin/chromium")  # Debian's `chromium` package (.ci/run installs it)


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


# -- the reports in a real browser ------------------------------------------------------------------------------

def browser_required() -> bool:
    """CI services set ``CI``; .ci/run sets ``LIGHTFORMER_REQUIRE_BROWSER=1``. There a missing browser fails."""
    return (os.environ.get("LIGHTFORMER_REQUIRE_BROWSER") == "1"
            or os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"))


def find_chromium() -> str:
    found = shutil.which("chromium") or (str(CHROMIUM) if CHROMIUM.exists() else None)
    if found is None:
        why = "chromium not installed (Debian: apt-get install --no-install-recommends chromium)"
        if browser_required():
            pytest.fail(f"{why}; CI or LIGHTFORMER_REQUIRE_BROWSER=1 requires the browser test to run, not skip")
        pytest.skip(why)
    return found


def chromium(exe: str, args: list[str], timeout: float = 90.0) -> str:
    """Run chromium in its own process group and return its stdout; a hang kills the whole group and fails."""
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium gave no result within {timeout:g} s: {args[-1]}")
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {err[-3000:]}"
    return out


# Runs on the page's load event, when every inlined image has decoded (or failed to), and writes each <img>'s decoded
# size and laid-out box onto <html>: read back from --dump-dom, invisible in the screenshot.
PROBE = ("<script>window.addEventListener('load', function () { var r = [];"
         " for (var i = 0; i < document.images.length; i++) { var im = document.images[i],"
         " b = im.getBoundingClientRect(); r.push([im.naturalWidth, im.naturalHeight, b.left, b.top, b.width,"
         " b.height]); } document.documentElement.setAttribute('data-lf-images', JSON.stringify(r)); });</script>")


def render_and_check(exe: str, page: pathlib.Path, pngs: list[pathlib.Path], texts: list[str],
                     size: tuple[int, int] = (1400, 1000)) -> str:
    """Open ``page`` in headless Chromium at ``size`` and check what a person sees: a screenshot of that size that
    is not blank, every PNG of ``pngs`` decoded (in order, at its own pixel size) and drawn in colour where the page
    lays it out, and ``texts`` (HTML fragments such as table cells) in the DOM the browser built."""
    import html

    import numpy as np
    from PIL import Image

    text = page.read_text()
    assert text.count("</body>") == 1 and "<script" not in text  # the reports themselves run no script
    probed = page.with_name(f"{page.stem}_probed.html")
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    shot = page.with_name(f"{page.stem}_screenshot.png")
    w, h = size
    dom = chromium(exe, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                         f"--user-data-dir={page.parent / 'chromium-profile'}", f"--window-size={w},{h}",
                         f"--screenshot={shot}", "--dump-dom", probed.as_uri()])

    # the screenshot: the requested size, and not blank
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot of {page.name}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32) / 255.0
    assert pixels.shape == (h, w, 3), f"screenshot of {page.name} is {pixels.shape[1]}x{pixels.shape[0]}, not {w}x{h}"
    assert pixels.std() > 0.05 and (pixels.min(axis=-1) < 0.5).mean() > 0.005, f"{page.name} renders blank"

    # the inlined plots: decoded at their own size, and drawn in colour inside their boxes on the screenshot
    probe = re.search(r'data-lf-images="([^"]*)"', dom)
    assert probe, f"the load-event probe did not run in {page.name}"
    images = json.loads(html.unescape(probe.group(1)))
    decoded, want = [(nw, nh) for nw, nh, *_ in images], [Image.open(p).size for p in pngs]
    assert decoded == want, f"{page.name}: images decoded at {decoded} (0 = not decoded), want {want}"
    for (_, _, x, y, bw, bh), p in zip(images, pngs):
        assert bw > 100 and bh > 100 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h, \
            f"{p.name} laid out at {x:.0f},{y:.0f} {bw:.0f}x{bh:.0f}, not inside the {w}x{h} screenshot"
        box = pixels[int(y) + 2:int(y + bh) - 2, int(x) + 2:int(x + bw) - 2]
        coloured = int(((box.max(axis=-1) - box.min(axis=-1)) > 0.3).sum())  # plot markers and lines
        assert coloured > 50, f"{p.name}: {coloured} coloured pixels where the plot should be"

    # the tables: their cells as the browser parsed them
    for t in texts:
        assert t in dom, f"{t!r} not in the DOM Chromium built from {page.name}"
    return f"{page.name} {w}x{h}: {len(images)} plots decoded, {len(texts)} table texts found"


def capacity(mixer, seed, value, state):
    """An MQAR capacity record as ``lightformer suite`` writes it, with a learning curve."""
    return {"kind": "capacity", "task": "mqar", "mixer": mixer, "label": None, "seed": seed, "status": "ok",
            "metric": "accuracy", "value": value, "val_value": value, "lr": 0.01, "steps": 20, "seconds": 1.0,
            "model": {"num_layers": 2, "dim": 64, "num_heads": 2}, "train": {"batch_size": 16, "max_steps": 20},
            "task_options": {"num_kv_pairs": 4}, "mixer_options": {}, "lrs": [0.01], "params": 68608,
            "state_size": state, "seq_len": 32, "eval_n": 32, "cpu": "Test CPU 9000", "threads": 1,
            "torch": "2.x", "git_commit": "abc1234", "timestamp": "2025-01-02T03:04:05+00:00",
            "lr_grid": [{"lr": 0.01, "val": value, "history": [{"step": 10, "val_accuracy": value / 2},
                                                               {"step": 20, "val_accuracy": value}]}]}


def checkpoint(label, mode, **kw):
    """A ``bench --checkpoints`` record."""
    r = {"kind": "checkpoint", "status": "ok", "reason": None, "checkpoint": f"/r/{label}", "label": label,
         "baseline": "/r/base", "is_baseline": label == "base", "mode": mode, "seq_len": 256, "batch": 8,
         "method": None, "method_options": None, "model_mib": 4.0, "file_mib": 4.1, "time_ms": None, "metrics": {},
         "cpu": "Test CPU 9000", "threads": 1, "torch": "2.x", "git_commit": "abc1234", "timestamp": "2025-01-02"}
    r.update(kw)
    return r


def test_html_renders_in_chromium(tmp_path, capsys, request):
    """The bench report, the compression report and the capacity leaderboard, opened in headless Chromium."""
    import html

    from lightformer.bench.compression_report import write_compression_report
    from lightformer.bench.leaderboard import write_leaderboard

    def cell(c: str) -> str:  # a table cell as Chromium serialises it
        return f"<td>{html.escape(c, quote=False)}</td>"

    exe = find_chromium()
    done = []

    paths = write_report(RECORDS, tmp_path / "bench")
    (table,) = build_tables(RECORDS)
    texts = [f"<th>{html.escape(h, quote=False)}</th>" for h in table.header]
    texts += [cell(c) for row in table.rows for c in row]
    assert cell("30 ms / 25 MiB · ×0.75 SDPA · ×0.50 local_attention") in texts
    pngs = [p for k, p in paths.items() if k.endswith(".png")]  # the time and memory plots, in page order
    texts.append("Machine: Test CPU 9000 · 2 threads · torch 2.x · git abc1234 · 2025-01-02")
    done.append(render_and_check(exe, paths["html"], pngs, texts))

    recs = [checkpoint("base", "fwd", time_ms=100.0), checkpoint("base", "eval", metrics={"loss": 1.5}),
            checkpoint("base", "decode", time_ms=2.0),
            checkpoint("int8", "fwd", time_ms=150.0, model_mib=1.0, method="int8"),
            checkpoint("int8", "eval", metrics={"loss": 1.52}, model_mib=1.0, method="int8"),
            checkpoint("int8", "decode", time_ms=1.5, model_mib=1.0, method="int8")]
    paths = write_compression_report(recs, tmp_path / "compression")
    done.append(render_and_check(exe, paths["html"], [paths["compression_pareto.png"]],
                                 ["<th>decode ms/token</th>", cell("int8"), cell("×0.25"), cell("+0.0200"),
                                  cell("1.5200")]))

    recs = [capacity("softmax", 0, 0.90, 4096), capacity("softmax", 1, 0.94, 4096),
            capacity("linear", 0, 0.50, 512), capacity("linear", 1, 0.52, 512)]
    paths = write_leaderboard(recs, tmp_path / "capacity")
    pngs = [paths["capacity_mqar_state.png"], paths["capacity_curves.png"]]
    done.append(render_and_check(exe, paths["html"], pngs, ["<th>mqar (accuracy, %)</th>", cell("softmax"),
                                                             cell("92.0 ± 2.0 ★"), cell("51.0 ± 1.0")]))

    version = chromium(exe, ["--version"], timeout=30).strip()
    with capsys.disabled():  # a line in the CI log (pytest runs -q): the browser test ran, and every check passed
        print(f"\n[browser test] {request.node.nodeid}: {version}; all checks passed: " + "; ".join(done))
