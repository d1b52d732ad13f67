"""The bench record: one JSON object per line of a results file (``--out results/bench.jsonl``).

Schema (``kind == "bench"``; every key is always present, ``None`` where not applicable)::

    kind          "bench"
    schema        1
    status        "ok" | "gate_failed" | "timeout" | "oom" | "unsupported" | "unavailable" | "error"
    reason        str | None      why the status is not "ok" (error text, capability, pip hint)
    impl          "lightformer" or a peer name ("sdpa", "local_attention", ...)
    label         row name in reports: the mixer for lightformer, the peer name otherwise
    mixer         the lightformer mixer measured (for a peer: the one it is the baseline for)
    options       dict            mixer options as given (the "T" sentinel unresolved)
    seq_len       int             T, tokens per sequence (decode: tokens decoded)
    batch, dim, heads  int        B, D, H
    dtype         "fp32" | "bf16" | "fp16" | "fp64"
    mode          "fwd" | "fwd+bwd" | "decode"
    causal        bool
    threads       int             torch intra-op threads actually used (requested ones if never started)
    time_ms       float | None    median wall time of one run (ms): forward, forward+backward, or T decode steps
    times_ms      list[float]     every timed run (ms)
    mem_mib       float | None    peak RSS growth (MiB), see ``lightformer.bench.cell``
    rss_reset     bool | None     whether the RSS high-water mark could be reset before the baseline
    flops         float | None    analytic FLOPs of one run (``lightformer.bench.flops``)
    flops_family  str | None      formula used: exact | window | block_sparse | kernel | low_rank | lsh |
                                  landmarks | linear
    gflops        float | None    flops / time (GFLOP/s)
    tokens_per_s  float | None    batch · seq_len / time (tokens/s)
    gate          dict | None     {"kind": "oracle" | "finite", "seq_len", "max_abs_err", "tol", "passed"}
    warmup, repeats  int
    cpu, torch, python, git_commit, timestamp   str    machine line (timestamp ISO 8601 UTC)
    elapsed_s     float | None    wall time of the subprocess (s)

Records with ``kind == "quality"`` (written by ``compare``) share the file and are kept by ``load_records``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .grid import Cell, cell_key

STATUSES = ("ok", "gate_failed", "timeout", "oom", "unsupported", "unavailable", "error")
#: Statuses that are retried on resume (they may succeed next time without --force).
RETRIED = ("error", "unavailable")


def base_record(cell: Cell, machine: dict[str, str], *, status: str, reason: str | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """A record for ``cell`` with every schema key, no measurements."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    return {
        "kind": "bench", "schema": 1, "status": status, "reason": reason,
        "impl": cell.impl, "label": cell.label, "mixer": cell.mixer, "options": dict(cell.options),
        "seq_len": cell.seq_len, "batch": cell.batch, "dim": cell.dim, "heads": cell.heads, "dtype": cell.dtype,
        "mode": cell.mode, "causal": cell.causal, "threads": threads if threads is not None else cell.threads,
        "time_ms": None, "times_ms": [], "mem_mib": None, "rss_reset": None, "flops": None, "flops_family": None,
        "gflops": None, "tokens_per_s": None, "gate": None, "warmup": cell.warmup, "repeats": cell.repeats,
        "cpu": machine.get("cpu", "unknown"), "torch": machine.get("torch", "unknown"),
        "python": machine.get("python", "unknown"), "git_commit": machine.get("git_commit", "unknown"),
        "timestamp": machine.get("timestamp", ""), "elapsed_s": None,
    }


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file (missing file -> ``[]``); blank and corrupt lines are skipped
    (a sweep killed mid-write leaves at most one)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record as a line (the parent directory is created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()


def bench_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``kind == "bench"`` records, the latest one per cell key (a re-measured cell replaces the old one)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "bench":
            latest[cell_key(r)] = r
    return list(latest.values())


def quality_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``kind == "quality"`` records (``compare``'s val_bpc/val_loss per mixer and options)."""
    return [r for r in records if r.get("kind") == "quality"]
