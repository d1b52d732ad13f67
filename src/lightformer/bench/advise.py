"""``lightformer advise``: which mixer fits a sequence length, a memory and a latency budget, measured.

Candidates are the lightformer mixers (``impl == "lightformer"``) seen in the bench records plus every registered
mixer, each distinct (mixer, options) separately, plus every schedule preset (``masformer``, ``mamba_hybrid``) that
a bench, quality or capacity record names: an architecture is named as a whole, as ``ModelConfig.architecture``
names it. For each one:

1. Capabilities (registry; for a preset ``architecture_capabilities``, the meet of its layers' mixers):
   ``causal`` requested -> ``capabilities.causal``; ``decode`` requested -> ``capabilities.decode``. Unregistered
   names are judged by their records alone. Cost is measured per mixer layer; a preset without a record of its own
   costs the mean over its layers (at ``SCHEDULE_DEPTH`` layers) of its layer mixers' costs, so a hybrid ranks
   on the same per-layer scale as a single mixer (and is unmeasured if one of its layer mixers is).
2. Measurement: the records of ``mode`` / ``dtype`` / ``causal`` (and batch/dim/heads when given) at the nearest
   measured T >= ``seq_len``; if several match (e.g. different batch), the slowest is used (conservative). A
   non-ok status there (oom, timeout, gate_failed ...) rejects the mixer. With no record at T >= ``seq_len`` the
   largest measured T is extrapolated, time and memory scaled by (T/T_m)^e · (log T / log T_m)^l with the
   mixer's declared ``Capabilities.time_exponent`` e and ``log_exponent`` l; the output says so. No ok record at all = ``unmeasured``.
3. Budget: time_ms <= ``max_latency_ms`` and mem_mib <= ``max_memory_mib`` (``None`` = no limit).
4. Quality. Without ``task``: the LM validation bpc of ``compare`` (``kind == "quality"`` records), the mean over
   seeds of the records with the same mixer and options, else of the same mixer (noted ``options differ``).
   With ``task``: the test metric of ``lightformer suite`` on that task (``kind == "capacity"`` records, mean over
   seeds), and a note when it was measured at a length T far from ``seq_len`` (more than 4× apart), because the
   capacity a length needs is what the families differ in most.

Accepted mixers are ranked by quality in its metric's direction (lower bpc first, higher accuracy first; those
without quality after those with), then time, then memory, then name. The Pareto front is taken over (quality,
time, memory), a missing quality counting as worse than any measured one.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..tasks.base import direction
from .grid import LIGHTFORMER, MODES
from .results import bench_records, capacity_records, quality_records

#: Capacity measured at a length more than this factor away from the request is flagged.
FAR_LENGTH = 4.0


@dataclass
class Candidate:
    """One (mixer, options) judged by ``advise``; times in ms, memory in MiB, T in tokens."""

    mixer: str
    options: dict[str, Any]
    name: str
    time_ms: float | None = None
    mem_mib: float | None = None
    measured_len: int | None = None
    extrapolated: bool = False
    quality: float | None = None
    quality_metric: str = "val_bpc"
    quality_note: str = ""
    cost_note: str = ""
    pareto: bool = False
    reason: str = ""

    @property
    def val_bpc(self) -> float | None:
        return self.quality if self.quality_metric == "val_bpc" else None

    def quality_key(self) -> float:
        """The quality as a number to minimise (+inf when unmeasured)."""
        if self.quality is None:
            return float("inf")
        return self.quality if direction(self.quality_metric) == "min" else -self.quality


@dataclass
class Advice:
    """Result of ``advise``: ``picks`` ranked best first, ``rejected`` with their reasons."""

    seq_len: int
    max_memory_mib: float | None
    max_latency_ms: float | None
    causal: bool
    decode: bool
    mode: str
    dtype: str
    task: str | None = None
    picks: list[Candidate] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)

    def format(self) -> str:
        """Human-readable advice: the request, one line per pick, one line per rejected mixer."""
        budget = [f"T={self.seq_len}",
                  f"memory <= {self.max_memory_mib:g} MiB" if self.max_memory_mib is not None else "any memory",
                  f"latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else "any latency",
                  "causal" if self.causal else "non-causal", *(["decode"] if self.decode else []),
                  f"mode {self.mode}", f"dtype {self.dtype}",
                  f"quality: {self.task + ' (suite)' if self.task else 'LM val_bpc (compare)'}"]
        lines = ["advise: " + ", ".join(budget)]
        lines.append("Recommended (best first):" if self.picks else "Recommended: none fits the request.")
        for i, c in enumerate(self.picks, 1):
            where = f"at T={c.measured_len}" if not c.extrapolated else \
                f"at T={self.seq_len} (extrapolated from T={c.measured_len})"
            if c.measured_len is not None and c.measured_len != self.seq_len and not c.extrapolated:
                where += f" (nearest measured T >= {self.seq_len})"
            quality = (f"{c.quality_metric} {c.quality:.3g}{c.quality_note}" if c.quality is not None
                       else "no quality measured")
            lines.append(f"  {i}. {c.name}: {c.time_ms:.4g} ms, {c.mem_mib:.4g} MiB{c.cost_note} {where} ({self.mode}, "
                         f"{self.dtype}), {quality}; {'Pareto-optimal' if c.pareto else 'dominated'}")
        if self.rejected:
            lines.append("Rejected:")
            lines += [f"  {c.name}: {c.reason}" for c in self.rejected]
        return "\n".join(lines)


def _name(mixer: str, options: dict[str, Any], several: bool) -> str:
    if not several or not options:
        return mixer
    return f"{mixer} [{', '.join(f'{k}={v}' for k, v in sorted(options.items()))}]"


def _capabilities(name: str) -> Any:
    """The declared capabilities of a mixer or a schedule preset; ``None`` for an unregistered name."""
    from ..models.architecture import architecture_capabilities, is_architecture

    return architecture_capabilities(name) if is_architecture(name) else None


def _scaling(mixer: str, seq_len: int, measured_len: int) -> float:
    """Time/memory growth from ``measured_len`` to ``seq_len``: the architecture's declared
    ``Capabilities.time_scale``; an unregistered mixer is assumed quadratic (the worst)."""
    caps = _capabilities(mixer)
    if caps is not None:
        return caps.time_scale(seq_len, measured_len)
    return (seq_len / measured_len) ** 2


def _judge(c: Candidate, recs: list[dict[str, Any]], seq_len: int) -> None:
    """Fill time/memory/measured_len or ``reason`` from the candidate's records at the request's shape."""
    if not recs:
        c.reason = "unmeasured (no record at this mode/dtype/causal; run bench or advise --measure)"
        return
    at_or_above = sorted({r["seq_len"] for r in recs if r["seq_len"] >= seq_len})
    if at_or_above:
        t = at_or_above[0]
        here = [r for r in recs if r["seq_len"] == t]
        ok = [r for r in here if r["status"] == "ok"]
        if not ok:
            r = here[-1]
            c.reason = f"{r['status']} at T={t}" + (f" ({str(r.get('reason'))[:120]})" if r.get("reason") else "")
            return
        worst = max(ok, key=lambda r: r["time_ms"])
        c.time_ms, c.mem_mib, c.measured_len = worst["time_ms"], worst["mem_mib"], t
        return
    ok = [r for r in recs if r["status"] == "ok"]
    if not ok:
        r = max(recs, key=lambda r: r["seq_len"])
        c.reason = f"{r['status']} at T={r['seq_len']}; unmeasured at T >= {seq_len}"
        return
    t = max(r["seq_len"] for r in ok)
    worst = max((r for r in ok if r["seq_len"] == t), key=lambda r: r["time_ms"])
    scale = _scaling(c.mixer, seq_len, t)
    c.time_ms, c.mem_mib = worst["time_ms"] * scale, worst["mem_mib"] * scale
    c.measured_len, c.extrapolated = t, True


#: depth at which a schedule preset's per-layer cost is estimated (the capacity recipes' and the model bench's)
SCHEDULE_DEPTH = 4


def _judge_schedule(c: Candidate, bench: list[dict[str, Any]], seq_len: int, matches) -> None:
    """A schedule preset's cost per layer from its layers' own mixer cells: the mean over its layers (at
    ``SCHEDULE_DEPTH`` layers) of each layer mixer's judged time and memory at ``seq_len``, so that it ranks on the
    same per-layer scale as a single mixer. A layer mixer without a usable record makes the preset unmeasured (or
    rejected), naming that mixer."""
    from ..models.architecture import model_fields
    from ..models.config import ModelConfig

    layers = ModelConfig(num_layers=SCHEDULE_DEPTH, **model_fields(c.mixer)).mixers
    times, mems, extrapolated, measured = [], [], False, []
    for name in layers:
        part = Candidate(name, {}, name)
        _judge(part, [r for r in bench if r["mixer"] == name and not r.get("options") and matches(r)], seq_len)
        if part.reason:
            c.reason = f"layer mixer {name}: {part.reason}"
            return
        times.append(part.time_ms)
        mems.append(part.mem_mib)
        extrapolated |= part.extrapolated
        measured.append(part.measured_len)
    c.time_ms, c.mem_mib = sum(times) / len(times), sum(mems) / len(mems)
    c.measured_len, c.extrapolated = max(measured), extrapolated
    counts = {n: layers.count(n) for n in dict.fromkeys(layers)}
    c.cost_note = " per layer: the mean of " + " + ".join(f"{k}×{n}" for n, k in counts.items()) + \
        f" of {SCHEDULE_DEPTH} layers, from their own cells"


def _capacity_quality(c: Candidate, capacity: list[dict[str, Any]], task: str, seq_len: int) -> None:
    """Mean test metric over seeds of ``c.mixer`` on ``task``, with a note on the length it was measured at."""
    recs = [r for r in capacity if r["mixer"] == c.mixer and r.get("value") is not None]
    if not recs:
        return
    c.quality_metric = f"test_{recs[0]['metric']}"
    c.quality = statistics.fmean(float(r["value"]) for r in recs)
    lengths = sorted({int(r["seq_len"]) for r in recs if r.get("seq_len")})
    c.quality_note = f" on {task} at T={','.join(map(str, lengths))} over {len(recs)} seed(s)"
    if lengths and max(seq_len / min(lengths), max(lengths) / seq_len) > FAR_LENGTH:
        c.quality_note += f"; measured far from T={seq_len}, so it may not hold there"


def _pareto(cands: list[Candidate]) -> None:
    def vec(c: Candidate) -> tuple[float, float, float]:
        return c.quality_key(), c.time_ms or 0.0, c.mem_mib or 0.0

    for c in cands:
        v = vec(c)
        c.pareto = not any(all(a <= b for a, b in zip(vec(o), v)) and vec(o) != v for o in cands if o is not c)


def advise(records: Iterable[dict[str, Any]], *, seq_len: int, max_memory_mib: float | None = None,
           max_latency_ms: float | None = None, causal: bool = False, decode: bool = False, mode: str = "fwd+bwd",
           dtype: str = "fp32", batch: int | None = None, dim: int | None = None,
           heads: int | None = None, task: str | None = None) -> Advice:
    """Recommend mixers for ``seq_len`` tokens within ``max_memory_mib`` (MiB) and ``max_latency_ms`` (ms).

    Args:
        records: bench, quality and capacity records (e.g. ``load_records("results/bench.jsonl")``).
        task: rank by the capacity measured on this task (``lightformer suite``) instead of LM bpc.
        causal / decode: required capabilities. mode / dtype: which measurements to read
            (``fwd | fwd+bwd | decode``). batch / dim / heads: optional filters on the measurements.

    Returns:
        ``Advice``; see the module docstring for the rules.

    Raises:
        ValueError: ``seq_len`` not positive or a negative budget.
    """
    from lightformer import MIXERS

    from ..models.schedule import SCHEDULE_PRESETS

    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    for what, v in (("max_memory_mib", max_memory_mib), ("max_latency_ms", max_latency_ms)):
        if v is not None and v < 0:
            raise ValueError(f"{what} must be non-negative, got {v}")
    records = list(records)
    # whole-model records (model modes) are stacks, not mixer candidates
    bench = [r for r in bench_records(records) if r.get("impl") == LIGHTFORMER and r.get("mode") in MODES]
    quality = quality_records(records)
    capacity = [r for r in capacity_records(records) if r.get("task") == task and r.get("status") == "ok"] \
        if task else []
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    for r in bench:
        keys.setdefault((r["mixer"], json.dumps(r.get("options") or {}, sort_keys=True)), r.get("options") or {})
    named = {r.get("mixer") for r in records if r.get("kind") in ("bench", "quality", "capacity")}
    for m in [*MIXERS.names(), *(p for p in SCHEDULE_PRESETS if p in named)]:
        if not any(k[0] == m for k in keys):
            keys[(m, "{}")] = {}
    advice = Advice(seq_len, max_memory_mib, max_latency_ms, causal, decode, mode, dtype, task)
    accepted = []
    for (mixer, okey), options in sorted(keys.items()):
        several = sum(1 for k in keys if k[0] == mixer) > 1
        c = Candidate(mixer, options, _name(mixer, options, several))
        caps = _capabilities(mixer)
        if causal and caps is not None and not caps.causal:
            c.reason = "not causal (capabilities.causal=False)"
        elif not causal and caps is not None and not caps.non_causal:
            c.reason = "causal-only (capabilities.non_causal=False)"
        elif decode and caps is not None and not caps.decode:
            c.reason = "no decode path (capabilities.decode=False)"
        if c.reason:
            advice.rejected.append(c)
            continue
        recs = [r for r in bench if r["mixer"] == mixer and json.dumps(r.get("options") or {}, sort_keys=True) ==
                okey and r["mode"] == mode and r["dtype"] == dtype and bool(r["causal"]) == bool(causal)
                and (batch is None or r["batch"] == batch) and (dim is None or r["dim"] == dim)
                and (heads is None or r["heads"] == heads)]
        if not recs and mixer in SCHEDULE_PRESETS:
            _judge_schedule(c, bench, seq_len, lambda r: r["mode"] == mode and r["dtype"] == dtype
                            and bool(r["causal"]) == bool(causal) and (batch is None or r["batch"] == batch)
                            and (dim is None or r["dim"] == dim) and (heads is None or r["heads"] == heads))
        else:
            _judge(c, recs, seq_len)
        if not c.reason and max_memory_mib is not None and c.mem_mib > max_memory_mib:
            c.reason = f"over memory ({c.mem_mib:.4g} MiB > {max_memory_mib:g} MiB at T={c.measured_len}" + \
                (", extrapolated)" if c.extrapolated else ")")
        if not c.reason and max_latency_ms is not None and c.time_ms > max_latency_ms:
            c.reason = f"over latency ({c.time_ms:.4g} ms > {max_latency_ms:g} ms at T={c.measured_len}" + \
                (", extrapolated)" if c.extrapolated else ")")
        if c.reason:
            advice.rejected.append(c)
            continue
        if task:
            _capacity_quality(c, capacity, task, seq_len)
        else:
            q = [r for r in quality if r.get("mixer") == mixer and r.get("val_bpc") is not None]
            exact = [r for r in q if json.dumps(r.get("options") or {}, sort_keys=True) == okey]
            if exact or q:
                chosen = exact or q
                c.quality = statistics.fmean(float(r["val_bpc"]) for r in chosen)
                c.quality_note = ("" if exact else " (options differ)") + \
                    (f" (mean of {len(chosen)} runs)" if len(chosen) > 1 else "")
        accepted.append(c)
    _pareto(accepted)
    advice.picks = sorted(accepted, key=lambda c: (c.val_bpc is None, c.quality_key(), c.time_ms, c.mem_mib,
                                                   c.name))
    return advice
