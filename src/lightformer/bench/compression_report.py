"""The compression report: size, speed and quality of trained checkpoints against a baseline from the same run.

``lightformer report FILE --name compression`` renders the ``kind: "checkpoint"`` records of ``lightformer bench
--checkpoints BASE,A,B`` (``lightformer.bench.checkpoint_cell``) as one table per (baseline, T, B):

    variant | method | model MiB | ×base | file MiB | fwd ms | ×base | decode ms/token | ×base | val loss | Δ | front

``×base`` divides by the baseline checkpoint's record of the same run and shape; ``Δ`` is the validation loss minus
the baseline's (nats per scored unit). ``front`` marks the Pareto-optimal variants: ``size`` when no other variant
is at most as large and at most as lossy (and strictly better in one), ``speed`` likewise for forward time. Files:
``<name>.md``, ``<name>_pareto.png`` (validation loss against model size and against forward time, fronts drawn),
``<name>.html`` (the same, PNG inlined).
"""

from __future__ import annotations

import base64
import html
import statistics
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .table import machine_line

LEGEND = ("One `lightformer bench --checkpoints` run: each checkpoint loaded as `eval` loads it, measured in its own "
          "subprocess per mode. model MiB: its tensors (quantised or packed ones at their stored size); fwd: the "
          "whole model's forward of [B, T] token ids, median of the timed runs; decode: per token, after a "
          "context of T tokens; val loss: the task's validation loss (nats per scored unit) on the run's "
          "canonical validation set. ×base: ratio to the baseline checkpoint of the same run (< 1 = smaller or "
          "faster); Δ: loss minus the baseline's. front: Pareto-optimal in (size, loss) and/or (fwd time, loss).")


@dataclass
class Variant:
    """One checkpoint's measurements in one (baseline, T, B) group."""

    label: str
    method: str | None
    options: dict[str, Any] | None
    is_baseline: bool
    model_mib: float | None = None
    file_mib: float | None = None
    fwd_ms: float | None = None
    decode_ms: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)
    fronts: list[str] = field(default_factory=list)
    rounds: dict[str, dict[int, float]] = field(default_factory=dict)  # mode -> round -> time_ms
    num_rounds: int = 0


@dataclass
class Group:
    baseline: str
    seq_len: int
    batch: int
    variants: list[Variant]
    decode_context: int | None = None

    @property
    def base(self) -> Variant | None:
        return next((v for v in self.variants if v.is_baseline), None)


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (cost, loss) point, whether no other point is at most as costly and at most as lossy while better
    in one of the two (both minimised). ``[(1, 2), (2, 1), (2, 2)]`` -> ``[True, True, False]``."""
    out = []
    for i, (c, l) in enumerate(points):
        dominated = any(c2 <= c and l2 <= l and (c2 < c or l2 < l) for j, (c2, l2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def build_groups(records: Iterable[dict[str, Any]]) -> list[Group]:
    """The checkpoint records grouped by (baseline, T, B), variants in first-seen order. A timed mode's value is the
    median over its rounds (``bench --checkpoints --rounds``) of the newest record of each round; for ``eval`` the
    newest record wins. ``eval`` records join every group of their baseline (they do not depend on T or B)."""
    recs = [r for r in records if r.get("kind") == "checkpoint"]
    shapes: dict[tuple[str, int, int], None] = {}
    for r in recs:
        if r["mode"] != "eval":
            shapes[(r["baseline"], r["seq_len"], r["batch"])] = None
    if not shapes:
        shapes = {(r["baseline"], r["seq_len"], r["batch"]): None for r in recs}
    groups = []
    for baseline, seq_len, batch in shapes:
        variants: dict[str, Variant] = {}
        for r in recs:
            if r["baseline"] != baseline or (r["mode"] != "eval" and (r["seq_len"], r["batch"]) != (seq_len, batch)):
                continue
            v = variants.setdefault(r["label"], Variant(label=r["label"], method=r.get("method"),
                                                        options=r.get("method_options"),
                                                        is_baseline=bool(r.get("is_baseline"))))
            if r.get("model_mib") is not None:
                v.model_mib, v.file_mib = r["model_mib"], r.get("file_mib")
            if r["status"] != "ok":
                v.notes.append(f"{r['mode']}: {r['status']}" + (f" ({_short(r.get('reason'))})"
                                                                 if r.get("reason") else ""))
                continue
            if r["mode"] in ("fwd", "decode"):  # the newest record of each round; the median over rounds below
                v.rounds.setdefault(r["mode"], {})[r.get("round", 0)] = r["time_ms"]
            elif r["mode"] == "eval":
                v.loss, v.accuracy = r["metrics"].get("loss"), r["metrics"].get("accuracy")
        for v in variants.values():
            times = {mode: statistics.median(by_round.values()) for mode, by_round in v.rounds.items()}
            v.fwd_ms, v.decode_ms = times.get("fwd"), times.get("decode")
            v.num_rounds = max((len(b) for b in v.rounds.values()), default=0)
        contexts = {r.get("decode_context") for r in recs if r["mode"] == "decode" and r["baseline"] == baseline
                    and (r["seq_len"], r["batch"]) == (seq_len, batch) and r.get("decode_context")}
        group = Group(baseline, seq_len, batch, list(variants.values()),
                      decode_context=contexts.pop() if len(contexts) == 1 else None)
        _mark_fronts(group)
        groups.append(group)
    return groups


def _short(reason: str | None) -> str:
    return (reason or "").splitlines()[0][:120]


def _mark_fronts(group: Group) -> None:
    for attr, name in (("model_mib", "size"), ("fwd_ms", "speed")):
        vs = [v for v in group.variants if getattr(v, attr) is not None and v.loss is not None]
        for v, on in zip(vs, pareto([(getattr(v, attr), v.loss) for v in vs])):
            if on:
                v.fronts.append(name)


def _ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or not base else f"×{value / base:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _method(v: Variant) -> str:
    if v.method is None:
        return "none (baseline)" if v.is_baseline else "none"
    opts = {k: val for k, val in (v.options or {}).items() if val not in ((), [], None)}
    return v.method + (" (" + ", ".join(f"{k}={val}" for k, val in sorted(opts.items())) + ")" if opts else "")


HEADER = ("variant", "method", "model MiB", "×base", "file MiB", "fwd ms", "×base", "decode ms/token", "×base",
          "val loss", "Δ nats", "front")
#: the columns a classification task adds before ``front`` (its validation accuracy and the change, in points)
ACCURACY_HEADER = ("val accuracy %", "Δ points")


def header(group: Group) -> tuple[str, ...]:
    """``HEADER``, with ``ACCURACY_HEADER`` before ``front`` when a variant of ``group`` has an accuracy."""
    if any(v.accuracy is not None for v in group.variants):
        return HEADER[:-1] + ACCURACY_HEADER + HEADER[-1:]
    return HEADER


def rows(group: Group) -> list[list[str]]:
    """The table rows of ``group`` (see ``header``)."""
    base = group.base
    with_accuracy = len(header(group)) > len(HEADER)
    out = []
    for v in group.variants:
        delta = None if v.loss is None or base is None or base.loss is None else v.loss - base.loss
        acc = [] if not with_accuracy else [
            _num(None if v.accuracy is None else 100 * v.accuracy, ".1f"),
            "—" if v.accuracy is None or base is None or base.accuracy is None
            else f"{100 * (v.accuracy - base.accuracy):+.1f}"]
        out.append([v.label + (" *(baseline)*" if v.is_baseline else ""), _method(v), _num(v.model_mib, ".3f"),
                    _ratio(v.model_mib, base and base.model_mib), _num(v.file_mib, ".3f"), _num(v.fwd_ms, ".1f"),
                    _ratio(v.fwd_ms, base and base.fwd_ms), _num(v.decode_ms, ".2f"),
                    _ratio(v.decode_ms, base and base.decode_ms), _num(v.loss, ".4f"),
                    "—" if delta is None else f"{delta:+.4f}", *acc,
                    ", ".join(v.fronts) + ("; " if v.fronts and v.notes else "") + "; ".join(v.notes)])
    return out


def _title(group: Group) -> str:
    rounds = max((v.num_rounds for v in group.variants), default=0)
    each = f"; median of {rounds} round-robin rounds" if rounds > 1 else ""
    ctx = f"{group.decode_context} tokens" if group.decode_context else f"T={group.seq_len}"
    return (f"Baseline {Path(group.baseline).name}: fwd at T={group.seq_len}, B={group.batch}; decode after {ctx}"
            f"{each}")


def _plot(groups: list[Group], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    drawn = False
    for ax, attr, xlabel, front in ((axes[0], "model_mib", "model size (MiB)", "size"),
                                    (axes[1], "fwd_ms", "forward time (ms)", "speed")):
        for group in groups[:1]:  # one run per figure: the first group
            vs = [v for v in group.variants if getattr(v, attr) is not None and v.loss is not None]
            for v in vs:
                ax.scatter(getattr(v, attr), v.loss, color="C3" if front in v.fronts else "C0", zorder=3)
                ax.annotate(v.label, (getattr(v, attr), v.loss), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
                drawn = True
            on = sorted((getattr(v, attr), v.loss) for v in vs if front in v.fronts)
            if len(on) > 1:
                ax.step([p[0] for p in on], [p[1] for p in on], where="post", color="C3", alpha=0.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats)")
        ax.grid(True, alpha=0.3)
    if groups:
        fig.suptitle(_title(groups[0]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return drawn


def write_compression_report(records: Iterable[dict[str, Any]], out_dir: str | os.PathLike[str], *,
                             name: str = "compression") -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>_pareto.png`` and ``<name>.html`` of the checkpoint records into ``out_dir``.

    Returns:
        ``{"markdown": Path, "html": Path, "<name>_pareto.png": Path}``.

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    records = list(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = build_groups(records)
    png = out / f"{name}_pareto.png"
    _plot(groups, png)
    line = machine_line(records, kinds=("checkpoint",))
    md = ["# lightformer compression\n", f"**{line}**\n", LEGEND + "\n"]
    for g in groups:
        md.append(f"## {_title(g)}\n")
        md.append("| " + " | ".join(header(g)) + " |")
        md.append("|" + "---|" * len(header(g)))
        md.extend("| " + " | ".join(row) + " |" for row in rows(g))
        md.append("")
    if not groups:
        md.append("No checkpoint records.\n")
    md.append(f"![{png.stem}]({png.name})\n")
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(md))
    e = html.escape
    from .report import STYLE

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lightformer compression</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<p><b>{e(line)}</b></p><h1>lightformer compression</h1><p>{e(LEGEND)}</p>"]
    for g in groups:
        parts.append(f"<h2>{e(_title(g))}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header(g)) + "</tr>")
        parts.extend("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows(g))
        parts.append("</table>")
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    parts.append(f"<img alt='{e(png.name)}' src='data:image/png;base64,{data}'></body></html>")
    page = out / f"{name}.html"
    page.write_text("\n".join(parts))
    return {"markdown": md_path, "html": page, png.name: png}
