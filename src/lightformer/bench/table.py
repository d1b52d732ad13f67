"""Report tables: one per (mode, dtype, causal, batch, dim, heads, threads) group, rows = implementations,
columns = T. Shared by the Markdown and HTML reports and by the plots.

A cell reads ``time ms / mem MiB`` (decode cells: per-token ``time ms / state MiB``, the context's state) (``(1 run)`` when fewer than 3 timed runs were taken) and then the time ratios to the baselines measured in the same run at the same
shape: ``×r SDPA`` and ``×r <peer>`` (ratio = this time / baseline time, < 1 = faster). A cell that did not
measure shows its status (``oom``, ``timeout (> N s)`` with the seconds it was given, ``gate_failed`` ...). The last column is the crossover length
against SDPA: the smallest measured T from which the implementation is faster than SDPA at every larger T where
both were measured (``none`` if it is not faster at the largest such T). Decode groups have no SDPA row (no peer
decodes), so their baseline is lightformer's ``softmax`` with its KV cache: the ratio reads ``×r softmax`` and the
crossover is the context from which a mixer's per-token latency beats the KV cache's.

Compiled cells (``bench --compile``) are rows of their own in the same table, named ``<row> (compiled)``; besides
the ratios to the (eager) baselines they read ``×r eager``, the ratio to the same implementation's eager cell of the
run, and ``compile N s``, the compilation time spent in the warm-up. Cells measured on CUDA form their own groups
(the title names the device).

Whole-model groups (modes ``model-fwd``, ``model-fwd+bwd``; one group per number of layers too) have one row per
architecture, named with its layers' mixers, options and position scheme; their baseline is the all-softmax model
of the same run (``model_cell.MODEL_BASELINE``): a cell reads ``time ms / mem MiB · ×r time · ×m mem vs
all-softmax``, and the crossover is the T from which the architecture is faster than the all-softmax stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .grid import LIGHTFORMER, is_model_mode, run_mode
from .model_cell import MODEL_BASELINE
from .peers import PEERS, SDPA
from .results import bench_records

GROUP_FIELDS = ("mode", "dtype", "causal", "batch", "dim", "heads", "threads", "num_layers", "device")


def group_value(r: dict[str, Any], name: str) -> Any:
    """``r[name]``, with records written before ``device`` existed read as CPU ones."""
    value = r.get(name)
    return "cpu" if name == "device" and value is None else value
#: the baseline of decode groups: softmax attention decoding from its KV cache
DECODE_BASELINE = "softmax"


def is_baseline(r: dict[str, Any]) -> bool:
    """SDPA; in a decode group lightformer's softmax (KV cache), in a model group the all-softmax model, whatever
    its options."""
    if r.get("compile"):
        return False
    if r["mode"] == "decode":
        return r["impl"] == LIGHTFORMER and r["mixer"] == DECODE_BASELINE
    if is_model_mode(r["mode"]):
        return r["impl"] == LIGHTFORMER and r["mixer"] == MODEL_BASELINE
    return r["impl"] == SDPA


def baseline_name(mode: str) -> str:
    """How a group of ``mode`` names its baseline in ratios and the crossover column."""
    if mode == "decode":
        return f"{DECODE_BASELINE} (KV cache)"
    return "all-softmax" if is_model_mode(mode) else "SDPA"


def _layers_text(mixers: list[str]) -> str:
    """``["softmax", "sliding_window", "sliding_window"]`` -> ``softmax + 2×sliding_window`` (runs of a mixer)."""
    runs: list[list[Any]] = []
    for m in mixers:
        if runs and runs[-1][0] == m:
            runs[-1][1] += 1
        else:
            runs.append([m, 1])
    return " + ".join(m if n == 1 else f"{n}×{m}" for m, n in runs)


def model_row_name(r: dict[str, Any]) -> str:
    """``masformer: softmax + 3×sliding_window [sliding_window.window=256] · position rope``."""
    opts = [f"{m}.{k}={v}" for m, table in sorted((r.get("options") or {}).items())
            for k, v in sorted((table or {}).items())]
    name = r["mixer"]
    if r.get("layer_mixers"):
        name += ": " + _layers_text(r["layer_mixers"])
    if opts:
        name += f" [{', '.join(opts)}]"
    return name + (f" · position {r['position']}" if r.get("position") else "")


def row_id(r: dict[str, Any]) -> tuple[str, str, str, bool]:
    return r["impl"], r["mixer"], json.dumps(r.get("options") or {}, sort_keys=True), bool(r.get("compile"))


def row_name(r: dict[str, Any]) -> str:
    """``softmax``, ``sliding_window [window=256]``, ``local_attention (peer of sliding_window) [window=256]``;
    model rows see ``model_row_name``; a compiled cell's row ends in `` (compiled)``."""
    if r.get("compile"):
        return _eager_row_name(r) + " (compiled)"
    return _eager_row_name(r)


def _eager_row_name(r: dict[str, Any]) -> str:
    if is_model_mode(r["mode"]):
        return model_row_name(r)
    opts = r.get("options") or {}
    suffix = f" [{', '.join(f'{k}={v}' for k, v in sorted(opts.items()))}]" if opts else ""
    if r["impl"] == LIGHTFORMER:
        return r["mixer"] + suffix
    if r["impl"] == SDPA:
        return "sdpa (torch, peer)"
    return f"{r['impl']} (peer of {r['mixer']}){suffix}"


def group_title(key: tuple) -> str:
    g = dict(zip(GROUP_FIELDS, key))
    mode = f"whole model, {g['num_layers']} layers, {run_mode(g['mode'])}" if is_model_mode(g["mode"]) else g["mode"]
    device = f" · {g['device']}" if g.get("device", "cpu") != "cpu" else ""
    return (f"{mode} · {g['dtype']} · {'causal' if g['causal'] else 'non-causal'} · "
            f"B={g['batch']} D={g['dim']} H={g['heads']} · {g['threads']} threads{device}")


def group_stem(key: tuple) -> str:
    g = dict(zip(GROUP_FIELDS, key))
    layers = f"_l{g['num_layers']}" if g.get("num_layers") is not None else ""
    device = f"_{g['device']}" if g.get("device", "cpu") != "cpu" else ""
    return (f"{g['mode'].replace('+', '-')}_{g['dtype']}_{'causal' if g['causal'] else 'noncausal'}"
            f"_b{g['batch']}_d{g['dim']}_h{g['heads']}_t{g['threads']}{layers}{device}")


def crossover(times: dict[int, float], sdpa: dict[int, float]) -> int | None:
    """Smallest T from which ``times[T] < sdpa[T]`` for every larger common T; None if not faster at the largest."""
    common = sorted(set(times) & set(sdpa))
    best = None
    for t in reversed(common):
        if times[t] < sdpa[t]:
            best = t
        else:
            break
    return best


@dataclass
class Table:
    """One report group: ``header`` then ``rows`` of strings; ``series`` = per row name {T: (time_ms, mem_mib)}."""

    key: tuple
    title: str
    stem: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    series: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)

    @property
    def model(self) -> bool:
        """Whether the rows are whole models (a model mode) rather than mixers."""
        return is_model_mode(dict(zip(GROUP_FIELDS, self.key))["mode"])


def _peer_time(by_shape: dict, r: dict[str, Any], peer: str, metric: str = "time_ms") -> float | None:
    """The time (or ``metric``) of ``peer`` at r's shape (``SDPA`` = the group's baseline, see ``is_baseline``)."""
    for other in by_shape.get((r["seq_len"],), []):
        if other["status"] != "ok":
            continue
        if peer == SDPA and is_baseline(other):
            return other[metric]
        if peer != SDPA and other["impl"] == peer and other["mixer"] == r["mixer"] and \
                other.get("options") == r.get("options") and bool(other.get("compile")) == bool(r.get("compile")):
            return other["time_ms"]
    return None


def _eager_time(by_shape: dict, r: dict[str, Any]) -> float | None:
    """The time of the eager cell of a compiled cell's implementation at its shape (same impl, mixer, options)."""
    for other in by_shape.get((r["seq_len"],), []):
        if other["status"] == "ok" and not other.get("compile") and row_id(other)[:3] == row_id(r)[:3]:
            return other["time_ms"]
    return None


def build_tables(records: Iterable[dict[str, Any]]) -> list[Table]:
    """Group the latest bench records into tables (see the module docstring)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in bench_records(records):
        if r.get("mode") == "train":  # whole training steps: their own section (``train_table``)
            continue
        groups.setdefault(tuple(group_value(r, f) for f in GROUP_FIELDS), []).append(r)
    tables = []
    # mixer groups first, then the whole-model ones (the report's second section)
    for key in sorted(groups, key=lambda k: (is_model_mode(k[0]), tuple(str(v) for v in k))):
        recs = groups[key]
        lens = sorted({r["seq_len"] for r in recs})
        by_shape: dict[tuple, list[dict[str, Any]]] = {}
        for r in recs:
            by_shape.setdefault((r["seq_len"],), []).append(r)
        rows: dict[tuple, dict[int, dict[str, Any]]] = {}
        for r in recs:
            rows.setdefault(row_id(r), {})[r["seq_len"]] = r
        mode = key[GROUP_FIELDS.index("mode")]
        table = Table(key, group_title(key), group_stem(key),
                      ["architecture" if is_model_mode(mode) else "implementation", *[f"T={t}" for t in lens],
                       f"crossover vs {baseline_name(mode)}"])

        def baseline_row(rid: tuple) -> bool:
            return is_baseline({"impl": rid[0], "mixer": rid[1], "mode": mode, "compile": rid[3]})

        # the baseline first, then lightformer mixers, each followed by its peers (compiled rows after eager ones)
        order = sorted(rows, key=lambda rid: (not baseline_row(rid), rid[1], rid[0] != LIGHTFORMER, rid[0], rid[2],
                                              rid[3]))
        sdpa_times = {t: r["time_ms"] for rid in rows if baseline_row(rid)
                      for t, r in rows[rid].items() if r["status"] == "ok"}
        for rid in order:
            cells, times = [], {}
            first = next(iter(rows[rid].values()))
            name = row_name(first)
            table.series[name] = {}
            for t in lens:
                r = rows[rid].get(t)
                cells.append(_cell_text(r, by_shape) if r else "—")
                if r and r["status"] == "ok":
                    times[t] = r["time_ms"]
                    table.series[name][t] = (r["time_ms"], r["mem_mib"])
            if baseline_row(rid):
                cross = "— (baseline)"
            elif not set(times) & set(sdpa_times):
                cross = "n/a"
            else:
                c = crossover(times, sdpa_times)
                cross = "none" if c is None else f"T={c}"
            table.rows.append([name, *cells, cross])
        tables.append(table)
    return tables


def _num(x: float) -> str:
    """3 significant digits below 100, whole numbers above (``62697``, not ``6.27e+04``)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _cell_text(r: dict[str, Any], by_shape: dict) -> str:
    if r["status"] == "timeout" and r.get("elapsed_s"):
        return f"timeout (> {r['elapsed_s']:.0f} s)"
    if r["status"] != "ok":
        return r["status"]
    text = f"{_num(r['time_ms'])} ms / {_num(r['mem_mib'])} MiB"
    if r["mode"] == "decode" and r.get("state_mib") is not None:  # the peak RSS includes the prefill's forward
        text = f"{_num(r['time_ms'])} ms / state {_num(r['state_mib'])} MiB"
    if r.get("repeats") is not None and r["repeats"] < 3:  # fewer than the default three timed runs: say so
        text += f" ({r['repeats']} run{'s' if r['repeats'] > 1 else ''})"
    ratios = []
    if is_model_mode(r["mode"]):
        s, m = _peer_time(by_shape, r, SDPA), _peer_time(by_shape, r, SDPA, "mem_mib")
        if s and not is_baseline(r):
            mem = f" · ×{r['mem_mib'] / m:.2f} mem" if m and r["mem_mib"] is not None else ""
            ratios.append(f"×{r['time_ms'] / s:.2f} time{mem} vs all-softmax")
    elif not is_baseline(r):
        s = _peer_time(by_shape, r, SDPA)
        if s:
            ratios.append(f"×{r['time_ms'] / s:.2f} {'softmax' if r['mode'] == 'decode' else 'SDPA'}")
    if r["impl"] == LIGHTFORMER and not is_model_mode(r["mode"]):
        for peer in PEERS:
            if peer != SDPA and PEERS[peer].mixer == r["mixer"]:
                p = _peer_time(by_shape, r, peer)
                if p:
                    ratios.append(f"×{r['time_ms'] / p:.2f} {peer}")
    if r.get("compile"):
        e = _eager_time(by_shape, r)
        if e:
            ratios.append(f"×{r['time_ms'] / e:.2f} eager")
        if r.get("compile_s") is not None:
            ratios.append(f"compile {r['compile_s']:.0f} s")
    return text + (" · " + " · ".join(ratios) if ratios else "")


def machine_line(records: Iterable[dict[str, Any]], kinds: tuple[str, ...] = ("bench",)) -> str:
    """``CPU · threads · torch · git commit · date`` over the records of ``kinds`` (distinct values joined by
    ``,``)."""
    recs = [r for r in records if r.get("kind") in kinds]

    def values(field_: str) -> str:
        vals = sorted({str(r.get(field_)) for r in recs if r.get(field_) is not None})
        return ", ".join(vals) or "unknown"

    dates = sorted(str(r.get("timestamp")) for r in recs if r.get("timestamp"))
    date = dates[-1][:10] if dates else "unknown"
    devices = sorted({r.get("device") or "cpu" for r in recs})
    device = f" · device {', '.join(devices)}" if devices and devices != ["cpu"] else ""
    return (f"Machine: {values('cpu')} · {values('threads')} threads · torch {values('torch')} · "
            f"git {values('git_commit')} · {date}{device}")
