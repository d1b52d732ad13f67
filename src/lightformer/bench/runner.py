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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cell import RECORD_PREFIX
from .grid import LIGHTFORMER, Cell, Grid, cell_key
from .machine import machine_info
from .peers import get_peer
from .plan import capability_reason, expand, load_plugins
from .results import RETRIED, append_record, base_record, bench_records, load_records

_OOM_TEXT = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory")


def child_env(threads: int) -> dict[str, str]:
    """The environment of a measuring subprocess: thread counts fixed, this checkout's package importable."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the lightformer package
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class Outcome:
    """How a ``python -m <module> <payload>`` subprocess ended: its record (the last ``RECORD_PREFIX`` line) or
    the status it died with (``timeout``, ``oom``, ``error``) and why; ``elapsed_s`` in seconds."""

    record: dict[str, Any] | None
    status: str
    reason: str
    elapsed_s: float


def run_module(module: str, payload: str, *, threads: int, timeout_s: float) -> Outcome:
    """Run ``python -m module payload`` in a fresh process group; kill the group after ``timeout_s``.

    ``oom`` = killed by SIGKILL (the kernel OOM killer) or an allocation failure on stderr; ``error`` = any other
    death without a record."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", module, payload], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(threads), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return Outcome(None, "timeout", f"no result within --timeout {timeout_s:g} s", time.monotonic() - t0)
    elapsed = time.monotonic() - t0
    for line in reversed(out.splitlines()):
        if line.startswith(RECORD_PREFIX):
            return Outcome(json.loads(line[len(RECORD_PREFIX):]), "ok", "", elapsed)
    tail = err.strip()[-1500:]
    if proc.returncode == -signal.SIGKILL or any(s in err for s in _OOM_TEXT):
        return Outcome(None, "oom", f"subprocess killed (exit {proc.returncode}); {tail[-300:]}".strip(), elapsed)
    return Outcome(None, "error", f"subprocess exit {proc.returncode}: {tail}", elapsed)


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
    outcome = run_module("lightformer.bench.cell", cell.to_json(), threads=cell.threads, timeout_s=cell.timeout_s)
    rec = outcome.record or base_record(cell, machine, status=outcome.status, reason=outcome.reason)
    rec["elapsed_s"] = outcome.elapsed_s
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
    load_plugins(grid.plugins)
    cells = expand(grid)
    done = {} if force else {cell_key(r): r for r in bench_records(load_records(out_path))
                             if r.get("status") not in RETRIED}
    machine = machine_info()
    return measure_cells(cells, out_path, done=done, measure=lambda cell: run_cell(cell, machine),
                         describe=lambda c: f"{c.label} T={c.seq_len} {c.mode} {c.dtype}", progress=progress)


def measure_cells(cells: list[Any], out_path: str | os.PathLike[str], *, done: dict[str, dict[str, Any]],
                  measure: Callable[[Any], dict[str, Any]], describe: Callable[[Any], str], desc: str = "bench",
                  progress: bool = True) -> list[dict[str, Any]]:
    """The loop of every sweep: for each cell (``cell.key``) its stored record from ``done``, or ``measure(cell)``
    appended to ``out_path`` as soon as it is done; a tqdm bar with ETA showing ``describe(cell)``. Returns the
    records in cell order."""
    from tqdm import tqdm

    records = []
    bar = tqdm(cells, desc=desc, unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(describe(cell), refresh=False)
        if cell.key in done:
            records.append(done[cell.key])
            continue
        rec = measure(cell)
        append_record(out_path, rec)
        records.append(rec)
    bar.close()
    return records

