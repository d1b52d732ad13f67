"""The sweep: every cell of a grid in its own subprocess, records appended to a JSON-lines file, resumable.

Statuses decided here (without the cell reporting): ``unsupported`` from declared capabilities (no subprocess),
``unavailable`` for a peer whose package is missing, ``timeout`` when the subprocess outlives ``cell.timeout_s``
(its process group is killed), ``oom`` when it dies of SIGKILL (the kernel OOM killer) or its stderr shows an
allocation failure, ``error`` for any other death without a record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .cell import RECORD_PREFIX
from .grid import LIGHTFORMER, Cell, Grid, cell_key
from .machine import machine_info
from .peers import get_peer
from .plan import capability_reason, expand, load_plugins
from .results import RETRIED, append_record, base_record, bench_records, load_records

_OOM_TEXT = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory")


def _child_env(cell: Cell) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cell.threads)
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the lightformer package
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_cell(cell: Cell, machine: dict[str, str] | None = None) -> dict[str, Any]:
    """Measure ``cell`` in a fresh ``python -m lightformer.bench.cell`` subprocess and return its record.

    Never raises for a failing cell: the failure is the record's ``status``/``reason``.
    """
    machine = machine or machine_info()
    if cell.impl != LIGHTFORMER:
        peer = get_peer(cell.impl)
        if not peer.available():
            return base_record(cell, machine, status="unavailable", reason=peer.unavailable_reason())
    reason = capability_reason(cell)
    if reason:
        return base_record(cell, machine, status="unsupported", reason=reason)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "lightformer.bench.cell", cell.to_json()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(cell),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=cell.timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        rec = base_record(cell, machine, status="timeout", reason=f"no result within --timeout {cell.timeout_s:g} s")
        rec["elapsed_s"] = time.monotonic() - t0
        return rec
    elapsed = time.monotonic() - t0
    for line in reversed(out.splitlines()):
        if line.startswith(RECORD_PREFIX):
            rec = json.loads(line[len(RECORD_PREFIX):])
            rec["elapsed_s"] = elapsed
            return rec
    tail = err.strip()[-1500:]
    if proc.returncode == -signal.SIGKILL or any(s in err for s in _OOM_TEXT):
        rec = base_record(cell, machine, status="oom",
                          reason=f"subprocess killed (exit {proc.returncode}); {tail[-300:]}".strip())
    else:
        rec = base_record(cell, machine, status="error", reason=f"subprocess exit {proc.returncode}: {tail}")
    rec["elapsed_s"] = elapsed
    return rec


def run_sweep(grid: Grid, out_path: str | os.PathLike[str], *, force: bool = False,
              progress: bool = True) -> list[dict[str, Any]]:
    """Measure every cell of ``grid``, appending each record to ``out_path`` (JSON lines) as soon as it is done.

    A cell whose key already has a record in ``out_path`` is skipped (its stored record is returned) unless
    ``force`` or its stored status is ``error``/``unavailable``. Progress: a tqdm bar with ETA on stderr.

    Returns:
        The records of every cell of the grid, in grid order (stored ones for skipped cells).

    Raises:
        ValueError / TypeError: an invalid grid (unknown mixer, peer, option, dtype or mode).
    """
    from tqdm import tqdm

    load_plugins(grid.plugins)
    cells = expand(grid)
    done = {} if force else {cell_key(r): r for r in bench_records(load_records(out_path))
                             if r.get("status") not in RETRIED}
    machine = machine_info()
    records = []
    bar = tqdm(cells, desc="bench", unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(f"{cell.label} T={cell.seq_len} {cell.mode} {cell.dtype}", refresh=False)
        if cell.key in done:
            records.append(done[cell.key])
            continue
        rec = run_cell(cell, machine)
        append_record(out_path, rec)
        records.append(rec)
    bar.close()
    return records

