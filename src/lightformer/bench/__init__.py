"""``lightformer bench``: speed/memory harness with a correctness gate, peer baselines, reports and ``advise``.

Python API::

    run_sweep(grid, out_path, *, force=False, progress=True) -> list[dict]      # runner
    write_report(records, out_dir) -> dict[str, Path]                           # report
    advise(records, seq_len=..., max_memory_mib=..., max_latency_ms=..., ...)   # advise -> Advice
    compare_to(current, baseline, threshold=1.25) -> Regression                 # regress
"""

from .advise import Advice, advise
from .grid import Cell, Grid
from .regress import Regression, compare_to
from .report import write_report
from .results import load_records
from .runner import run_cell, run_sweep

__all__ = ["Grid", "Cell", "run_sweep", "run_cell", "write_report", "advise", "Advice", "compare_to",
           "Regression", "load_records"]
