"""The bench record: one JSON object per line of a results file (``--out results/bench.jsonl``).

Schema (``kind == "bench"``; every key is always present, ``None`` where not applicable)::

    kind          "bench"
    schema        3               (1: before the model keys below, 2: before device, compile, compile_s and
                                  mem_kind; read them with ``.get``: absent means cpu, eager, rss)
    status        "ok" | "gate_failed" | "timeout" | "oom" | "unsupported" | "unavailable" | "error"
                  ("diverged": capacity records only, a training loss that became NaN or infinite)
    reason        str | None      why the status is not "ok" (error text, capability, pip hint)
    impl          "lightformer" or a peer name ("sdpa", "local_attention", ...)
    label         row name in reports: the mixer for lightformer, the peer name otherwise
    mixer         the lightformer mixer measured (for a peer: the one it is the baseline for; in a model mode the
                  architecture: a mixer or a schedule preset)
    options       dict            mixer options as given (the "T" sentinel unresolved); in a model mode
                                  {mixer: options} for each distinct mixer of the architecture
    seq_len       int             T, tokens per sequence (decode: tokens decoded)
    batch, dim, heads  int        B, D, H
    dtype         "fp32" | "bf16" | "fp16" | "fp64"
    mode          "fwd" | "fwd+bwd" | "decode" | "model-fwd" | "model-fwd+bwd" (a whole model)
    causal        bool
    threads       int             torch intra-op threads actually used (requested ones if never started)
    time_ms       float | None    median wall time of one run (ms): forward, forward+backward, or T decode steps
    times_ms      list[float]     every timed run (ms)
    mem_mib       float | None    peak memory growth (MiB), see ``lightformer.bench.cell``
    mem_kind      "rss" | "cuda" | None   what mem_mib counts: the process's peak RSS growth (CPU) or the growth of
                                  ``torch.cuda.max_memory_allocated`` (CUDA)
    device        "cpu" | "cuda"
    compile       bool            the module ran through ``torch.compile`` (inductor)
    compile_s     float | None    compiled cells: the first call's wall time (s) minus the median run, i.e. what
                                  compiling cost (forward and backward graphs); spent in the warm-up, not timed
    rss_reset     bool | None     whether the RSS high-water mark could be reset before the baseline
    flops         float | None    analytic FLOPs of one run (``lightformer.bench.flops``)
    flops_family  str | None      formula used: exact | window | block_sparse | kernel | low_rank | lsh |
                                  landmarks | linear
    gflops        float | None    flops / time (GFLOP/s)
    tokens_per_s  float | None    batch · seq_len / time (tokens/s)
    gate          dict | None     {"kind": "oracle" | "finite", "seq_len", "max_abs_err", "tol", "passed"};
                                  a model cell's also has "mixers": {mixer: that mixer's oracle gate}
    architecture  str | None      model modes (``lightformer.bench.model_cell``), else None: the architecture,
    num_layers    int | None        its layers,
    layer_mixers  list | None       the mixer of each layer,
    position      str | None        "rope", or "none" when a mixer of the stack does not accept RoPE,
    position_note str | None        which mixers those are,
    schedule      str | None        the explicit schedule built (every layer's mixer and options, "T" resolved)
    warmup, repeats  int
    cpu, torch, python, git_commit, timestamp   str    machine line (timestamp ISO 8601 UTC)
    elapsed_s     float | None    wall time of the subprocess (s)

Records of the other kinds share the file and are kept by ``load_records``; each kind has one builder here and a
schema version: ``quality`` (``compare``'s LM quality per mixer, ``quality_record``), ``capacity``
(``lightformer suite``'s task metric per (task, mixer, seed), ``capacity_record``; fields listed there) and
``checkpoint`` (``bench --checkpoints``: a trained or compressed checkpoint's size, speed and validation loss,
``lightformer.bench.checkpoint_cell.checkpoint_record``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .grid import Cell, cell_key

BENCH_SCHEMA = 3

STATUSES = ("ok", "gate_failed", "timeout", "oom", "unsupported", "unavailable", "error", "diverged")
#: Statuses that are retried on resume (they may succeed next time without --force).
RETRIED = ("error", "unavailable")


def base_record(cell: Cell, machine: dict[str, str], *, status: str, reason: str | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """A record for ``cell`` with every schema key, no measurements."""
    from .model_cell import record_fields

    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    return {
        "kind": "bench", "schema": BENCH_SCHEMA, "status": status, "reason": reason,
        "impl": cell.impl, "label": cell.label, "mixer": cell.mixer, "options": dict(cell.options),
        "seq_len": cell.seq_len, "batch": cell.batch, "dim": cell.dim, "heads": cell.heads, "dtype": cell.dtype,
        "mode": cell.mode, "causal": cell.causal, "threads": threads if threads is not None else cell.threads,
        "device": cell.device, "compile": cell.compile, "compile_s": None, "mem_kind": None,
        "time_ms": None, "times_ms": [], "mem_mib": None, "rss_reset": None, "flops": None, "flops_family": None,
        "gflops": None, "tokens_per_s": None, "gate": None, "warmup": cell.warmup, "repeats": cell.repeats,
        "cpu": machine.get("cpu", "unknown"), "torch": machine.get("torch", "unknown"),
        "python": machine.get("python", "unknown"), "git_commit": machine.get("git_commit", "unknown"),
        "timestamp": machine.get("timestamp", ""), "elapsed_s": None, **record_fields(cell),
    }


QUALITY_SCHEMA = 2
CAPACITY_SCHEMA = 1


def quality_record(*, mixer: str, options: dict[str, Any], position: str, seed: int, metrics: dict[str, float],
                   steps: int, tokens: int, seconds: float, budget_s: float, data: str, data_sha256: str,
                   tokenizer: str, model: dict[str, Any], history: list[dict[str, float]],
                   machine: dict[str, str]) -> dict[str, Any]:
    """A ``kind: "quality"`` record: ``compare``'s LM validation metrics of one (mixer, seed) after ``budget_s``
    seconds of training (``val_bpc`` bits per token, ``val_loss`` nats per token) and its learning curve."""
    return {"kind": "quality", "schema": QUALITY_SCHEMA, "mixer": mixer, "options": dict(options),
            "position": position, "seed": seed, **metrics, "metric": "val_bpc", "steps": steps, "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else None, "budget_s": budget_s,
            "data": data, "data_sha256": data_sha256, "tokenizer": tokenizer, "model": model, "history": history,
            **{k: machine.get(k, "unknown") for k in ("cpu", "torch", "python", "git_commit", "timestamp")}}


def capacity_record(cell: Any, machine: dict[str, str], *, status: str, reason: str | None = None) -> dict[str, Any]:
    """A ``kind: "capacity"`` record of a ``CapacityCell`` with every schema key, no measurement yet.

    Schema: the cell's identifying fields (``task``, ``task_options``, ``mixer`` (the architecture: a mixer or a
    schedule preset), ``mixer_options``, ``model``, ``train``, ``lrs``, ``seed``, ``eval_n``, and ``label`` when
    set), ``label`` (``None`` when not set), ``schedule`` (the mixer of each layer, e.g. ``["softmax",
    "sliding_window"]`` for ``masformer`` at two layers; ``None`` when the model cannot be configured), ``status``
    (as bench records, or ``diverged``), ``reason``, ``metric`` (the task's primary metric), ``value`` (its test
    value), ``val_value``, ``metrics`` (every test metric), ``lr`` (the chosen one), ``lr_grid`` (per lr:
    validation value, steps, seconds, ``diverged_at`` (the step whose loss was NaN/inf, or ``None``), learning
    curve), ``diverged_at`` (status ``diverged``: the earliest such step), ``steps``, ``seconds`` (of the chosen
    run), ``total_seconds`` (the whole cell), ``tokens``, ``scored``, ``seq_len``, ``params`` (model size),
    ``state_size`` (floats per layer and sequence, the mean over the layers, ``lightformer.bench.state_size``),
    ``state_size_total`` (over every layer), ``state_size_reason`` (why they are ``None``), and the machine line.
    """
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    return {"kind": "capacity", "schema": CAPACITY_SCHEMA, "status": status, "reason": reason,
            "task": cell.task, "task_options": dict(cell.task_options), "mixer": cell.mixer,
            "label": getattr(cell, "label", "") or None, "schedule": _layer_mixers(cell),
            "mixer_options": dict(cell.mixer_options), "model": dict(cell.model), "train": dict(cell.train),
            "lrs": list(cell.lrs), "seed": cell.seed, "eval_n": cell.eval_n, "metric": None, "value": None,
            "val_value": None, "metrics": {}, "lr": None, "lr_grid": [], "steps": None, "seconds": None,
            "total_seconds": None, "tokens": None, "scored": None, "seq_len": None, "params": None,
            "state_size": None, "state_size_total": None, "state_size_reason": None, "diverged_at": None,
            "threads": cell.threads, "device": getattr(cell, "device", "cpu"),
            **{k: machine.get(k, "unknown") for k in ("cpu", "torch", "python", "git_commit", "timestamp")}}


def _layer_mixers(cell: Any) -> list[str] | None:
    layer_mixers = getattr(cell, "layer_mixers", None)
    return layer_mixers() if layer_mixers is not None else None


def capacity_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``kind == "capacity"`` records, the latest one per cell key (a re-measured cell replaces the old one)."""
    from .capacity import capacity_key

    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "capacity":
            latest[capacity_key(r)] = r
    return list(latest.values())


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
