"""Bench cells run in subprocesses: record schema, resume/--force, timeout, oom, the correctness gate."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lightformer.bench import load_records, run_cell, run_sweep
from lightformer.bench.plan import expand

SCHEMA = {
    "kind": str, "schema": int, "status": str, "impl": str, "label": str, "mixer": str, "options": dict,
    "seq_len": int, "batch": int, "dim": int, "heads": int, "dtype": str, "mode": str, "causal": bool,
    "threads": int, "times_ms": list, "warmup": int, "repeats": int, "cpu": str, "torch": str, "python": str,
    "git_commit": str, "timestamp": str, "device": str, "compile": bool,
}
MEASURED = {"time_ms": float, "mem_mib": float, "flops": float, "gflops": float, "tokens_per_s": float,
            "flops_family": str, "gate": dict, "rss_reset": bool, "elapsed_s": float, "mem_kind": str}


def check_schema(rec, status):
    for key, kind in SCHEMA.items():
        assert isinstance(rec[key], kind), (key, rec[key])
    assert rec["kind"] == "bench" and rec["status"] == status, rec.get("reason")
    for key in ("reason", *MEASURED):
        assert key in rec
    if status == "ok":
        for key, kind in MEASURED.items():
            assert isinstance(rec[key], kind), (key, rec[key])
        assert rec["time_ms"] > 0 and rec["mem_mib"] >= 0 and len(rec["times_ms"]) == rec["repeats"]
        tokens = 1 if rec["mode"] == "decode" else rec["seq_len"]  # decode: time_ms per token
        assert rec["tokens_per_s"] == pytest.approx(rec["batch"] * tokens / (rec["time_ms"] / 1e3))
        assert rec["gflops"] == pytest.approx(rec["flops"] / (rec["time_ms"] / 1e3) / 1e9)
    else:
        assert rec["time_ms"] is None and rec["gflops"] is None and isinstance(rec["reason"], str)


def test_schema_resume_and_force(tmp_path, tiny_grid):
    out = tmp_path / "bench.jsonl"
    grid = tiny_grid(peers="sdpa", modes=["fwd+bwd"], causal=[True])
    recs = run_sweep(grid, out, progress=False)
    assert [(r["impl"], r["label"]) for r in recs] == [("sdpa", "sdpa"), ("lightformer", "softmax")]
    for r in recs:
        check_schema(r, "ok")
        assert r["threads"] == 1 and r["mode"] == "fwd+bwd" and r["causal"] is True
    lf = recs[1]
    assert lf["gate"]["kind"] == "oracle" and lf["gate"]["passed"] and lf["gate"]["max_abs_err"] <= 1e-6
    assert recs[0]["gate"] == {"kind": "finite", "seq_len": 16, "max_abs_err": None, "tol": None, "passed": True}
    # exact causal, fwd+bwd = 3 × (8·B·T·D² + 4·B·T·D·(T+1)/2)
    assert lf["flops"] == pytest.approx(3 * (8 * 16 * 32**2 + 4 * 16 * 32 * 8.5)) and lf["flops_family"] == "exact"
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["kind"] == "bench" for line in lines)

    again = run_sweep(grid, out, progress=False)  # resume: nothing re-measured
    assert len(out.read_text().splitlines()) == 2
    assert [r["timestamp"] for r in again] == [r["timestamp"] for r in recs]

    forced = run_sweep(tiny_grid(peers="none", modes=["fwd+bwd"], causal=[True]), out, force=True,
                       progress=False)
    assert len(forced) == 1 and len(load_records(out)) == 3
    check_schema(forced[0], "ok")
    assert forced[0]["elapsed_s"] != recs[1]["elapsed_s"]


def test_gate_rejects_wrong_implementation(tmp_path, tiny_grid, plugin_env):
    grid = tiny_grid(mixers=["bench_test_wrong"], plugins=[plugin_env])
    rec = run_sweep(grid, tmp_path / "b.jsonl", progress=False)[0]
    check_schema(rec, "gate_failed")
    assert rec["gate"]["passed"] is False and rec["gate"]["max_abs_err"] > 1e-3
    assert "oracle" in rec["reason"] and rec["times_ms"] == [] and rec["mem_mib"] is None


def test_decode_cells_prefill_a_context_and_time_per_token(tmp_path, tiny_grid, plugin_env):
    grid = tiny_grid(mixers=["softmax", "linear", "bench_test_bad_step"], modes=["decode"], causal=[True],
                     plugins=[plugin_env])
    recs = {r["mixer"]: r for r in run_sweep(grid, tmp_path / "d.jsonl", progress=False)}
    for name in ("softmax", "linear"):
        check_schema(recs[name], "ok")
        assert recs[name]["gate"]["kind"] == "oracle+decode" and recs[name]["decode_steps"] == 16
    # the context's state: softmax's KV cache of T=16 tokens (2·B·H·T·d fp32), linear's fixed [B, H, d, d] + z
    b, t, d, h = recs["softmax"]["batch"], recs["softmax"]["seq_len"], recs["softmax"]["dim"], recs["softmax"]["heads"]
    assert recs["softmax"]["state_mib"] * 2 ** 20 == 2 * b * t * d * 4
    assert recs["linear"]["state_mib"] * 2 ** 20 == b * h * (d // h) * (d // h + 1) * 4
    # per-token FLOPs of exact attention at context T: 8·B·D² + 4·B·D·(T + 8.5)
    assert recs["softmax"]["flops"] == pytest.approx(8 * b * d * d + 4 * b * d * (t + 8.5))
    bad = recs["bench_test_bad_step"]
    check_schema(bad, "gate_failed")
    assert bad["gate"]["passed"] is False and "prefill + step" in bad["reason"]


def test_unsupported_cells_are_recorded_not_skipped(tmp_path, tiny_grid, plugin_env):
    grid = tiny_grid(mixers=["bench_test_noncausal", "bench_test_short"], seq_lens=[32], modes=["fwd", "decode"],
                     causal=[True], peers="none", plugins=[plugin_env])
    recs = run_sweep(grid, tmp_path / "b.jsonl", progress=False)  # all decided without a subprocess
    assert len(recs) == 4 and all(r["status"] == "unsupported" for r in recs)
    assert len(load_records(tmp_path / "b.jsonl")) == 4
    reasons = {(r["label"], r["mode"]): r["reason"] for r in recs}
    assert "cannot be causal" in reasons[("bench_test_noncausal", "fwd")]
    assert "max_len=16" in reasons[("bench_test_short", "fwd")]
    assert "max_len=16" in reasons[("bench_test_short", "decode")]
    for r in recs:
        check_schema(r, "unsupported")
    peer = expand(tiny_grid(peers="sdpa", mixers=["softmax"], modes=["decode"], causal=[True]))[0]
    rec = run_cell(peer)
    check_schema(rec, "unsupported")
    assert "no decode adapter" in rec["reason"]


def test_timeout_is_recorded(tiny_grid, monkeypatch):
    monkeypatch.setenv("LIGHTFORMER_BENCH_HOOK", "sleep:300")
    cell = expand(tiny_grid(timeout_s=5.0))[0]
    rec = run_cell(cell)
    check_schema(rec, "timeout")
    assert rec["elapsed_s"] < 60 and "--timeout 5" in rec["reason"]


def test_oom_under_rlimit_is_recorded(tiny_grid, monkeypatch):
    # 16 MiB of address space cannot hold the [1, 4096, 4096] float32 input (64 MiB)
    monkeypatch.delenv("LIGHTFORMER_BENCH_HOOK", raising=False)
    rec = run_cell(expand(tiny_grid(seq_lens=[4096], dim=4096, heads=32, max_memory_mib=16.0))[0])
    check_schema(rec, "oom")
    assert "MemoryError" in rec["reason"] or "alloc" in rec["reason"].lower()


def test_killed_subprocess_is_oom(tiny_grid, monkeypatch):
    monkeypatch.setenv("LIGHTFORMER_BENCH_HOOK", "sigkill")
    rec = run_cell(expand(tiny_grid())[0])
    check_schema(rec, "oom")
    assert "killed" in rec["reason"]


def test_missing_peer_package_is_unavailable(tiny_grid, monkeypatch):
    from lightformer.bench import peers

    monkeypatch.setitem(peers.PEERS, "x_transformers",
                        peers.Peer("x_transformers", "no_such_package_xyz", "no-such-package", "softmax",
                                   peers.attention._x_transformers))
    rec = run_cell(expand(tiny_grid(peers="x_transformers"))[0])
    check_schema(rec, "unavailable")
    assert "pip install no-such-package" in rec["reason"]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_reset_survives_a_thread_exit():
    """After a larger earlier peak (and a thread exit, which on some kernels folds the peak into ru_maxrss), the
    reset high-water mark must still show the growth of a later, smaller allocation, not 0."""
    import mmap
    import threading

    from lightformer.bench.cell import _peak_rss_kib, _reset_peak_rss

    big = bytearray(256 * 2**20)
    big[:: 4096] = b"x" * len(range(0, len(big), 4096))
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    del big
    if not _reset_peak_rss():
        pytest.skip("clear_refs not writable here")
    before = _peak_rss_kib()
    # a fresh anonymous mapping: its pages are new to the process whatever the allocator kept from earlier tests
    # (a bytearray could reuse heap pages that are already resident and not grow the RSS at all)
    small = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(small), 4096):
        small[offset] = 1
    grown_mib = (_peak_rss_kib() - before) / 1024
    small.close()
    assert 56 <= grown_mib <= 80


def test_amp_bf16_runs_under_autocast_with_fp32_weights(tmp_path, tiny_grid):
    from lightformer.bench.cell import _runner, build

    cell = expand(tiny_grid(dtypes=["amp-bf16"], modes=["fwd+bwd"], causal=[True]))[0]
    module, _ = build(cell)
    x = torch.randn(cell.batch, cell.seq_len, cell.dim)
    y = _runner(cell, module, x)(None)
    assert y.dtype == torch.bfloat16, "the forward ran under bf16 autocast"
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in module.parameters())
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    recs = run_sweep(tiny_grid(dtypes=["amp-bf16"], modes=["fwd", "fwd+bwd"], peers="sdpa"), tmp_path / "b.jsonl",
                     progress=False)
    assert len(recs) == 4
    for r in recs:
        check_schema(r, "ok")
        assert r["dtype"] == "amp-bf16"
