"""``bench --compile`` and ``--device``: cell keys, the plan, compiled cells measured beside eager ones, their gate
against the eager forward, the records and the report; CUDA cells (skipped without a CUDA device)."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest
import torch

from lightformer.bench.cell import _Memory, measure
from lightformer.bench.cli import grid_from_args
from lightformer.bench.grid import Cell, Grid, cell_key
from lightformer.bench.plan import capability_reason, expand
from lightformer.bench.results import base_record
from lightformer.bench.table import build_tables
from lightformer.cli import build_parser

CELL = Cell(impl="lightformer", mixer="softmax", options={}, seq_len=32, batch=2, dim=32, heads=4, dtype="fp32",
            mode="fwd+bwd", causal=True, threads=1, warmup=1, repeats=2)


def test_eager_cpu_keys_are_those_of_records_written_before_compile_and_device():
    key = json.loads(CELL.key)
    assert "compile" not in key and "device" not in key
    old = base_record(CELL, {}, status="ok")
    del old["compile"], old["device"]  # a schema-2 record
    assert cell_key(old) == CELL.key
    compiled = dataclasses.replace(CELL, compile=True)
    assert json.loads(compiled.key)["compile"] is True and compiled.key != CELL.key
    assert json.loads(dataclasses.replace(CELL, device="cuda").key)["device"] == "cuda"


def test_the_grid_puts_eager_and_compiled_cells_side_by_side():
    cells = expand(Grid(mixers=["softmax"], seq_lens=[64], peers="sdpa", compile=[False, True], threads=1))
    assert [(c.impl, c.compile) for c in cells] == [("sdpa", False), ("lightformer", False), ("sdpa", True),
                                                    ("lightformer", True)]
    assert {c.device for c in cells} == {"cpu"}


def test_compile_and_device_flags():
    args = build_parser().parse_args(["bench", "--mixers", "softmax", "--compile", "--device", "cpu"])
    grid = grid_from_args(args)
    assert grid.compile == [False, True] and grid.device == "cpu"
    assert grid_from_args(build_parser().parse_args(["bench", "--mixers", "softmax"])).compile == [False]
    assert Grid(device="auto").validate().device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="compile must be a non-empty list"):
        Grid(compile=[]).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_cuda_device_names_the_flag():
    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
        Grid(device="cuda").validate()


def test_compile_is_refused_where_the_mixer_declares_it_cannot_and_for_decode():
    mlstm = dataclasses.replace(CELL, mixer="mlstm", compile=True)
    assert "'mlstm' declares it cannot be compiled: torch 2.13" in capability_reason(mlstm)
    assert capability_reason(dataclasses.replace(mlstm, compile=False)) is None
    assert "decode steps run eagerly" in capability_reason(dataclasses.replace(CELL, mode="decode", compile=True))
    assert capability_reason(dataclasses.replace(CELL, compile=True)) is None


def test_a_compiled_cell_is_gated_on_the_eager_forward_and_records_its_compile_time(monkeypatch):
    # aot_eager (inductor's front end, no code generation) keeps this cheap; the harness around it is the same
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real(module, backend="aot_eager"))
    rec = measure(dataclasses.replace(CELL, compile=True))
    assert rec["status"] == "ok", rec["reason"]
    assert rec["compile"] is True and rec["device"] == "cpu" and rec["mem_kind"] == "rss"
    assert rec["gate"]["passed"] and rec["gate"]["compiled_max_abs_err"] <= 1e-6
    assert len(rec["times_ms"]) == 2 and rec["time_ms"] == statistics.median(rec["times_ms"])
    assert rec["compile_s"] > 0  # tracing took longer than a run of a [2, 32, 32] softmax layer
    # parameters (qkv 32x96, out 32x32) and the input [2, 32, 32], counted because they were resident at the
    # baseline taken after compiling
    assert rec["mem_mib"] >= (32 * 96 + 32 * 32 + 2 * 32 * 32) * 4 / 2**20


def test_a_compiled_module_that_disagrees_with_eager_reports_no_speed(monkeypatch):
    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1e-2

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Off(module))
    rec = measure(dataclasses.replace(CELL, compile=True, mode="fwd"))
    assert rec["status"] == "gate_failed" and rec["time_ms"] is None
    assert "compiled output differs from eager: max abs error 0.01" in rec["reason"]
    assert rec["gate"]["compiled_max_abs_err"] == pytest.approx(1e-2, rel=1e-4)


def test_report_rows_of_compiled_cells():
    def rec(impl, compile, time_ms, compile_s=None):
        r = base_record(dataclasses.replace(CELL, impl=impl, compile=compile, seq_len=64), {}, status="ok")
        r.update(time_ms=time_ms, mem_mib=1.0, compile_s=compile_s)
        return r

    records = [rec("sdpa", False, 10.0), rec("lightformer", False, 8.0), rec("lightformer", True, 4.0, 31.4),
               rec("sdpa", True, 12.0, 20.0)]
    (table,) = build_tables(records)
    rows = {row[0]: row[1] for row in table.rows}
    assert rows["softmax (compiled)"] == "4 ms / 1 MiB (2 runs) · ×0.40 SDPA · ×0.50 eager · compile 31 s"
    assert rows["sdpa (torch, peer) (compiled)"] == "12 ms / 1 MiB (2 runs) · ×1.20 SDPA · ×1.20 eager · compile 20 s"
    assert table.rows[0][0] == "sdpa (torch, peer)"  # the eager SDPA stays the baseline


def test_memory_kind_follows_the_device():
    assert _Memory("cpu").kind == "rss" and _Memory("cuda").kind == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_cell_times_with_synchronisation_and_counts_allocated_memory():
    rec = measure(dataclasses.replace(CELL, device="cuda", seq_len=256))
    assert rec["status"] == "ok", rec["reason"]
    assert rec["device"] == "cuda" and rec["mem_kind"] == "cuda" and rec["rss_reset"] is None
    # the input [2, 256, 32] fp32 and its gradient at least
    assert rec["mem_mib"] >= 2 * 2 * 256 * 32 * 4 / 2**20
