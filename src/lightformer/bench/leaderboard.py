"""The capacity leaderboard of ``lightformer suite`` / ``lightformer report``: task × mixer, mean ± spread over
seeds, the best per task marked, the mean over tasks; Markdown, PNG (each task's metric against the mixer's state
size, e.g. MQAR accuracy against state, Zoology's Figure 3 axes; and the learning curves: the validation metric
against the training step of every run, one panel per task) and one self-contained HTML page.

A row is an architecture (a mixer or a schedule preset such as ``masformer``), or ``architecture [label]`` for the
records of a labelled run (``suite --label``), so block, FFN or norm variants of one architecture are rows side by
side. A value is the test metric of the cell's best learning rate (chosen on validation). ``spread`` is half the range
over seeds (max − min) / 2; a mixer that ``verdict.tied`` cannot tell from the best one is marked as tied with it
(``≈``), since a ranking inside the seed noise is not a verdict. A run whose training loss became NaN or infinite
is shown as ``diverged (step N)``, never as a value, and its curve ends in a cross at that step.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..tasks.base import direction
from .lra_reference import LRA_TASKS, paper_row
from .results import capacity_records
from .verdict import tied


@dataclass
class Curve:
    """One run's learning curve: (step, validation value) points (finite ones), and where it diverged."""

    seed: int
    lr: float
    points: list[tuple[int, float]]
    diverged_at: int | None = None


@dataclass
class Entry:
    """One (task, architecture, label): values over seeds and what they were measured with."""

    task: str
    mixer: str
    metric: str
    values: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    state_size: int | None = None
    params: int | None = None
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    label: str | None = None
    diverged: list[int] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)

    @property
    def row(self) -> str:
        """The row's name: the architecture, with the run's label in brackets when it has one."""
        return f"{self.mixer} [{self.label}]" if self.label else self.mixer

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def spread(self) -> float:
        return (max(self.values) - min(self.values)) / 2 if len(self.values) > 1 else 0.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _curves(r: dict[str, Any], metric: str) -> list[Curve]:
    """The learning curve of the chosen learning rate, or of every one when none was chosen (a diverged cell)."""
    grid = r.get("lr_grid") or []
    chosen = [g for g in grid if g.get("lr") == r.get("lr")] if r.get("lr") is not None else grid
    out = []
    for g in chosen:
        hist = g.get("history") or []
        points = [(int(h["step"]), float(h[f"val_{metric}"])) for h in hist if _finite(h.get(f"val_{metric}"))]
        # a record written before divergence was detected: its first non-finite row
        bad = [int(h["step"]) for h in hist
               if not (_finite(h.get(f"val_{metric}", 0.0)) and _finite(h.get("train_loss", 0.0)))]
        diverged = g.get("diverged_at") if g.get("diverged_at") is not None else (bad[0] if bad else None)
        if points or diverged is not None:
            out.append(Curve(int(r.get("seed") or 0), float(g.get("lr") or 0.0), points, diverged))
    return out


def latest_per_seed(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest capacity record of every (task, row, seed), by timestamp: a row's seeds are its values, so a cell
    re-run at another configuration (e.g. after the recipe changed a mixer's heads) replaces the older record of
    that seed instead of counting as one more seed."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in sorted(capacity_records(records), key=lambda r: str(r.get("timestamp", ""))):
        latest[(r["task"], r["mixer"], r.get("label") or None, r.get("seed"))] = r
    return list(latest.values())


def entries(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Entry]]:
    """``{task: {row: Entry}}`` from the latest capacity record of every seed of every row (``latest_per_seed``;
    rows: ``Entry.row``)."""
    out: dict[str, dict[str, Entry]] = {}
    for r in latest_per_seed(records):
        task, mixer, label = r["task"], r["mixer"], r.get("label") or None
        probe = Entry(task, mixer, "", label=label)
        e = out.setdefault(task, {}).get(probe.row)
        if e is None:
            e = out[task][probe.row] = Entry(task, mixer, r.get("metric") or "", label=label)
        status = r["status"]
        if status == "ok" and r.get("value") is not None and not _finite(r["value"]):
            status = "diverged"  # an old record's non-finite value
        e.statuses.append(status)
        if status == "diverged":
            e.diverged.append(int(r.get("diverged_at") or r.get("steps") or 0))
        if r.get("metric"):
            e.metric = e.metric or r["metric"]
            e.curves += _curves(r, r["metric"])
        if status == "ok" and r.get("value") is not None:
            e.metric = r["metric"]
            e.values.append(float(r["value"]))
            e.state_size, e.params = r.get("state_size"), r.get("params")
            e.seconds.append(float(r.get("seconds") or 0.0))
            e.steps.append(int(r.get("steps") or 0))
            e.lrs.append(float(r.get("lr") or 0.0))
    return out


def best_and_ties(row: dict[str, Entry]) -> tuple[str | None, set[str]]:
    """The best mixer of a task (by mean, in the metric's direction) and the mixers tied with it."""
    measured = [e for e in row.values() if e.values]
    if not measured:
        return None, set()
    sign = 1 if direction(measured[0].metric) == "min" else -1
    best = min(measured, key=lambda e: sign * e.mean)
    ties = {e.row for e in measured if e is not best and tied((best.mean, best.spread), (e.mean, e.spread))}
    return best.row, ties


def _fmt(e: Entry | None) -> str:
    if e is None:
        return "—"
    if not e.values:
        return ", ".join(f"diverged (step {min(e.diverged)})" if s == "diverged" and e.diverged else s
                         for s in sorted(set(e.statuses))) or "—"
    scale = 100.0 if e.metric == "accuracy" else 1.0
    text = f"{e.mean * scale:.1f}" if scale == 100.0 else f"{e.mean:.3f}"
    if len(e.values) > 1:
        text += f" ± {e.spread * scale:.1f}" if scale == 100.0 else f" ± {e.spread:.3f}"
    if len(e.values) == len(e.statuses):
        return text
    diverged = f", {len(e.diverged)} diverged" if e.diverged else ""
    return text + f" ({len(e.values)}/{len(e.statuses)} seeds{diverged})"


def header_lines(records: list[dict[str, Any]]) -> list[str]:
    """Machine line, then per task its settings, model size, budget and learning-rate grid."""
    caps = [r for r in capacity_records(records)]
    if not caps:
        return ["No capacity records."]
    vals = {k: sorted({str(r.get(k)) for r in caps}) for k in ("cpu", "torch", "git_commit", "threads")}
    dates = sorted(str(r.get("timestamp", ""))[:10] for r in caps)
    lines = [f"Machine: {', '.join(vals['cpu'])} · {', '.join(vals['threads'])} threads · torch "
             f"{', '.join(vals['torch'])} · git {', '.join(vals['git_commit'])} · {dates[-1]}", ""]
    for task in sorted({r["task"] for r in caps}):
        recs = [x for x in caps if x["task"] == task]
        settings: dict[str, list[dict[str, Any]]] = {}
        for x in recs:  # runs of one task with other task options, budgets or grids each get their own line
            settings.setdefault(_settings(x), []).append(x)
        for group in settings.values():
            labels = sorted({x.get("label") or "" for x in group})
            which = "" if len(settings) == 1 else (" — runs " + ", ".join(f"**{lab}**" if lab else "without a label"
                                                                          for lab in labels))
            lines.append(_settings_line(task, group) + which)
        lines += _variant_lines(recs)
    return lines


def _budget(tr: dict[str, Any]) -> str:
    """The training budget per learning rate, with the early stop (``stop_at``) when the run has one."""
    stop = f" (stopped once validation reaches {tr['stop_at']:g}, checked every {tr.get('eval_interval')} steps)" \
        if tr.get("stop_at") is not None else ""
    return (f"{tr['max_time']:g} s" if tr.get("max_time") else "") + \
        (f"{' / ' if tr.get('max_time') else ''}≤ {tr['max_steps']} steps" if tr.get("max_steps") else "") + \
        " per learning rate" + stop


def _settings(r: dict[str, Any]) -> str:
    """What a header line states of a run, as a key: task options, batch, budget, grid, evaluation size."""
    tr = r["train"]
    return json.dumps([r["task_options"], tr.get("batch_size"), _budget(tr), r["lrs"], r["eval_n"]], sort_keys=True)


def _settings_line(task: str, group: list[dict[str, Any]]) -> str:
    r = group[0]
    opts = ", ".join(f"{k}={v}" for k, v in sorted(r["task_options"].items())) or "defaults"
    m, tr = r["model"], r["train"]
    params = sorted({x["params"] for x in group if x.get("params")})
    size = "size unknown" if not params else f"{params[0]:,} parameters" if len(params) == 1 else \
        f"{params[0]:,}–{params[-1]:,} parameters"
    seeds = sorted({x["seed"] for x in group})
    return (f"- **{task}** ({opts}): {m.get('num_layers')} layers × width {m.get('dim')}, {m.get('num_heads')} "
            f"heads ({size}); batch {tr.get('batch_size')}; budget {_budget(tr)}, lr ∈ "
            f"{{{', '.join(f'{x:g}' for x in r['lrs'])}}} chosen on validation ({r['eval_n']} examples); seeds "
            f"{seeds}")


def _variant_lines(caps: list[dict[str, Any]]) -> list[str]:
    """Per label of a task's records, the model fields its runs share and the other labels do not (what the label
    changed; ``position`` and ``max_len``, which the recipe sets per architecture, left out), and per schedule
    preset its layers."""
    lines = []
    by_label: dict[str | None, list[dict[str, Any]]] = {}
    for r in caps:
        by_label.setdefault(r.get("label") or None, []).append(r)
    if len(by_label) > 1 or None not in by_label:
        common = {lab: set.intersection(*(_fields(r) for r in recs)) for lab, recs in by_label.items()}
        for lab, items in sorted(common.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
            # a labelled run is compared with the unlabelled runs of its own architectures when there are any
            # (the recipe sets some fields per architecture, e.g. h3's heads), else with every other run
            mixers = {r["mixer"] for r in by_label[lab]}
            peers = [r for r in by_label.get(None, []) if r["mixer"] in mixers] if lab is not None else []
            base = set.intersection(*(_fields(r) for r in peers)) if peers else set.intersection(*common.values())
            changed = ", ".join(f"{k}={v if not isinstance(json.loads(v), str) else json.loads(v)}"
                                for k, v in sorted(items - base)) or "the recipe's model"
            lines.append(f"  - {f'label **{lab}**' if lab else 'no label'}: {changed}")
    lines += _architecture_lines([r for r in caps if not r.get("label")])
    schedules = {}
    for r in caps:
        if r.get("schedule") and len(set(r["schedule"])) > 1:
            schedules.setdefault(r["mixer"], r["schedule"])
    lines += [f"  - {name}: layers {' · '.join(layers)}" for name, layers in sorted(schedules.items())]
    return lines


def _model(r: dict[str, Any]) -> dict[str, Any]:
    """A record's model fields without ``position`` and ``max_len``, which the recipe sets per architecture."""
    return {k: v for k, v in r["model"].items() if k not in ("position", "max_len")}


def _architecture_lines(caps: list[dict[str, Any]]) -> list[str]:
    """Per architecture whose model differs from the one most of these records share (the recipe trains some at
    their paper's setting, ``bench.recipes.HEAD_DIM``), the fields that differ."""
    models = [json.dumps(_model(r), sort_keys=True) for r in caps]
    if not models:
        return []
    usual = json.loads(max(set(models), key=models.count))
    out = {}
    for r in caps:
        own = {k: v for k, v in _model(r).items() if usual.get(k) != v}
        if own:
            out[r["mixer"]] = ", ".join(f"{k}={v}" for k, v in sorted(own.items()))
    return [f"  - {mixer}: {changed}" for mixer, changed in sorted(out.items())]


def _fields(r: dict[str, Any]) -> set[tuple[str, str]]:
    """A record's model fields (``_model``) and mixer options (as ``option.KEY``), as comparable (name, JSON
    value) pairs."""
    items = {(k, json.dumps(v, sort_keys=True)) for k, v in _model(r).items()}
    return items | {(f"option.{k}", json.dumps(v, sort_keys=True)) for k, v in (r.get("mixer_options") or {}).items()}


def markdown_table(table: dict[str, dict[str, Entry]]) -> list[str]:
    tasks = sorted(table)
    mixers = sorted({m for row in table.values() for m in row})
    marks = {t: best_and_ties(table[t]) for t in tasks}
    metric_of = {t: next((e.metric for e in table[t].values() if e.metric), "") for t in tasks}
    head = "| mixer | " + " | ".join(f"{t} ({metric_of[t]}{', %' if metric_of[t] == 'accuracy' else ''})"
                                     for t in tasks) + " | mean accuracy (%) | mean rank |"
    lines = [head, "|---|" + "---|" * len(tasks) + "---|---|"]
    ranks = mean_ranks(table)
    accs = mean_accuracy(table)
    for m in sorted(mixers, key=lambda m: (ranks.get(m) is None, ranks.get(m) or 0.0, m)):
        cells = []
        for t in tasks:
            e = table[t].get(m)
            text = _fmt(e)
            best, ties = marks[t]
            if m == best:
                text = f"**{text}** ★"
            elif m in ties:
                text += " ≈"
            cells.append(text)
        rank = ranks.get(m)
        acc = accs.get(m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'—' if acc is None else f'{100 * acc:.1f}'} | "
                     f"{'—' if rank is None else f'{rank:.2f}'} |")
    return lines


def lra_table(table: dict[str, dict[str, Entry]]) -> list[str]:
    """Our LRA-task accuracies next to LRA Table 1's row of the same model (empty when no LRA task was run)."""
    tasks = [t for t in LRA_TASKS if t in table]
    if not tasks:
        return []
    lines = ["| mixer | LRA model | " + " | ".join(f"{t}: ours / LRA (%)" for t in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    rows = {m: e.mixer for t in tasks for m, e in table[t].items()}
    for m in sorted(rows):
        ref = paper_row(rows[m])
        cells = []
        for t in tasks:
            ours = _fmt(table[t].get(m))
            cells.append(f"{ours} / {ref[1][t]:.2f}" if ref else ours)
        lines.append(f"| {m} | {ref[0] if ref else '—'} | " + " | ".join(cells) + " |")
    return lines


def mean_accuracy(table: dict[str, dict[str, Entry]]) -> dict[str, float]:
    """Per row, the mean test accuracy over the accuracy tasks it was measured on (LRA's "Avg" column)."""
    out: dict[str, list[float]] = {}
    for row in table.values():
        for e in row.values():
            if e.values and e.metric == "accuracy":
                out.setdefault(e.row, []).append(e.mean)
    return {m: statistics.fmean(v) for m, v in out.items()}


def mean_ranks(table: dict[str, dict[str, Entry]]) -> dict[str, float]:
    """Per row, the mean over tasks of its rank (1 = best) among the rows measured on that task."""
    ranks: dict[str, list[float]] = {}
    for row in table.values():
        measured = [e for e in row.values() if e.values]
        if not measured:
            continue
        sign = 1 if direction(measured[0].metric) == "min" else -1
        for i, e in enumerate(sorted(measured, key=lambda e: sign * e.mean), 1):
            ranks.setdefault(e.row, []).append(float(i))
    return {m: statistics.fmean(r) for m, r in ranks.items()}


LABEL_DX, LABEL_DY, LABEL_H, CHAR_W = 5.0, 3.0, 8.5, 3.9  # points, for 7-pt labels


def label_offsets(anchors: Any, texts: list[str]) -> list[tuple[float, float]]:
    """Offsets (points) of point labels so that no two overlap: each label starts up and to the right of its point
    and, where it would cover a label already placed, moves down or up in steps of one line until it is clear.
    ``anchors``: the points' positions in points, ``[n, 2]``; label boxes are estimated from their length."""
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for i in sorted(range(len(texts)), key=lambda i: (-anchors[i][1], anchors[i][0])):
        x0 = anchors[i][0] + LABEL_DX
        width = CHAR_W * len(texts[i])
        for step in range(41):
            dy = LABEL_DY + LABEL_H * ((step + 1) // 2) * (-1 if step % 2 else 1)
            y0 = anchors[i][1] + dy
            if not any(x0 < bx1 and bx0 < x0 + width and y0 < by1 and by0 < y0 + LABEL_H
                       for bx0, by0, bx1, by1 in placed):
                break
        placed.append((x0, y0, x0 + width, y0 + LABEL_H))
        out.append((i, (LABEL_DX, dy)))
    return [offset for _, offset in sorted(out)]


def plot_state(table: dict[str, dict[str, Entry]], task: str, path: Path) -> bool:
    """The task's metric against state size (floats per layer and sequence, log x), one point per mixer with
    its seed spread as an error bar. False when no mixer has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [e for e in table[task].values() if e.values and e.state_size]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    pts = sorted(pts, key=lambda e: e.row)
    for i, e in enumerate(pts):
        ax.errorbar(e.state_size, e.mean, yerr=e.spread, fmt="o", color=plt.get_cmap("tab20").colors[i % 20],
                    capsize=3, label=e.row)
    ax.set_xscale("log")
    ax.autoscale_view()
    anchors = ax.transData.transform([(e.state_size, e.mean) for e in pts]) * 72.0 / fig.dpi  # in points
    for e, (dx, dy) in zip(pts, label_offsets(anchors, [e.row for e in pts])):
        ax.annotate(e.row, (e.state_size, e.mean), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"} if dy != LABEL_DY else None)
    ax.set_xlabel("state size per layer and sequence (floats, log)")
    ax.set_ylabel(f"test {pts[0].metric}")
    ax.set_title(f"{task}: {pts[0].metric} against the state a mixer keeps", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_curves(table: dict[str, dict[str, Entry]], path: Path) -> bool:
    """The validation metric against the training step of every run (the chosen learning rate's; every learning
    rate's for a cell that diverged at all of them), one panel per task, one colour per row. A run that diverged
    ends in a cross at the bottom of its panel at the step where its loss became NaN or infinite. False when no
    record has a learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in sorted(table) if any(e.curves for e in table[t].values())]
    if not tasks:
        return False
    cols = min(2, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 4.2 * rows), dpi=100, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        entries_ = sorted((e for e in table[task].values() if e.curves), key=lambda e: e.row)
        colors = plt.get_cmap("tab10" if len(entries_) <= 10 else "tab20").colors
        for i, e in enumerate(entries_):
            color = colors[i % len(colors)]
            drawn = False
            diverged: dict[int, list[float]] = {}
            for c in e.curves:
                # the evaluation at the diverged step measured a model of NaN weights: not a point of the curve
                points = [p for p in c.points if c.diverged_at is None or p[0] < c.diverged_at]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], color=color, marker=".", lw=1,
                            alpha=0.9, label=None if drawn else e.row)
                    drawn = True
                if c.diverged_at is not None:
                    diverged.setdefault(c.diverged_at, []).append(c.lr)
            for step, lrs in sorted(diverged.items()):
                ax.plot([step], [0.03], marker="x", markersize=9, mew=2, color=color, clip_on=False,
                        transform=ax.get_xaxis_transform(), label=None if drawn else e.row)
                drawn = True
                ax.annotate(f"{e.row} diverged @ {step} (lr {', '.join(f'{lr:g}' for lr in sorted(set(lrs)))})",
                            (step, 0.03), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                            xytext=(4, 6 + 10 * i), fontsize=7, color=color)
        metric = entries_[0].metric if entries_ else ""
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"{task}: validation {metric} during training (chosen lr; every lr of a diverged cell)",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _html_line(line: str) -> str:
    """A header line's Markdown (``**bold**``, ``- `` and ``  - `` list items) as HTML, its text escaped."""
    import re

    depth = 2 if line.startswith("  - ") else 1 if line.startswith("- ") else 0
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line[2 * depth:] if depth else line))
    return f"<p style='margin:0.2em 0 0.2em {1.5 * depth}em'>{'• ' if depth else ''}{text}</p>" if text else ""


def _html_table(md_lines: list[str]) -> list[str]:
    """A Markdown table (header, rule, rows) as HTML rows."""
    out = ["<table>"]
    for i, line in enumerate(md_lines):
        if i == 1:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(c.replace('**', ''))}</{tag}>" for c in cells) + "</tr>")
    return out + ["</table>"]


def write_leaderboard(records: Iterable[dict[str, Any]], out_dir: str | Path, *, name: str = "capacity",
                      preamble: str = "") -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>_<task>_state.png``, ``<name>_curves.png`` (when a record has a learning
    curve) and ``<name>.html`` into ``out_dir``; returns the paths."""
    records = list(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = entries(records)
    legend = ("Each cell: the test metric (accuracy in %) of the best learning rate on validation, mean ± half the "
              "range over seeds. ★ best per task; ≈ tied with the best (the difference is inside the seed spread, "
              "so it is not a verdict). Mean accuracy: over the accuracy tasks the mixer was measured on (LRA's "
              "Avg). Mean rank: the mixer's rank averaged over the tasks it was measured on. "
              "A status (oom, timeout, unsupported, error, diverged at a step) replaces a value where the cell did "
              "not finish. A row is a mixer or a schedule preset, with the run's label in brackets when it has one.")
    pngs = []
    for task in sorted(table):
        p = out / f"{name}_{task}_state.png"
        if plot_state(table, task, p):
            pngs.append(p)
    curves = out / f"{name}_curves.png"
    if plot_curves(table, curves):
        pngs.append(curves)
    lines = ["# lightformer capacity", "", *([preamble, ""] if preamble else []), *header_lines(records), "",
             legend, "", *markdown_table(table), ""]
    lra = lra_table(table)
    if lra:
        lines += ["## Long Range Arena tasks next to LRA Table 1", "",
                  "LRA's numbers (Tay et al. 2021, Table 1) are for its own data and TPU-sized models; only listops "
                  "and pathfinder are the same tasks here (see `lightformer.bench.lra_reference`).", "", *lra, ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    e = html.escape
    body = [_html_line(line) for line in header_lines(records)] + [f"<p>{e(legend)}</p>"]
    body += _html_table(markdown_table(table))
    if lra:
        body += ["<h2>Long Range Arena tasks next to LRA Table 1</h2>", *_html_table(lra)]
    for p in pngs:
        body.append(f"<img alt='{e(p.name)}' src='data:image/png;base64,"
                    f"{base64.b64encode(p.read_bytes()).decode('ascii')}'>")
    page = out / f"{name}.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>lightformer capacity</title><style>"
                    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
                    "#999;padding:4px 8px;font-size:13px}th{background:#dde6f0}img{max-width:48%}</style></head>"
                    "<body><h1>lightformer capacity</h1>" + (f"<p>{e(preamble)}</p>" if preamble else "")
                    + "\n".join(body) + "</body></html>\n")
    return {"markdown": md, "html": page, **{p.name: p for p in pngs}}
