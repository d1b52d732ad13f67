"""``lightformer report`` / ``lightformer bench --report``: Markdown, PNG plots and one self-contained HTML page.

Files written into ``out_dir`` (``name`` defaults to ``"bench"``):

    <name>.md               machine line, then one table per group (see ``lightformer.bench.table``): the mixer
                            groups, then a "Whole models" section with the groups of the model modes, then a
                            "Training steps" section (``bench --modes train``, ``train_cell.train_tables``)
    <name>_<group>_time.png     time (ms) vs T, log-log, one line per implementation (or architecture)
    <name>_<group>_memory.png   peak RSS growth (MiB) vs T, log-log
    <name>.html             the same tables and every PNG inlined as base64 data URIs (no external files)
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Iterable

from .table import Table, build_tables, machine_line
from .train_cell import TRAIN_LEGEND, TRAIN_SECTION, TRAIN_MODE, train_tables

LEGEND = ("Cells: median time (ms) / peak RSS growth (MiB); ×r = time ratio to the baseline measured in the same "
          "run at the same shape (< 1 = faster). Crossover: smallest measured T from which the implementation "
          "stays faster than SDPA.")
#: the CSS of every HTML report page
STYLE = ("body{font-family:sans-serif;margin:2em;color:#222;background:#fff}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #999;padding:4px 8px;"
         "font-size:13px}th{background:#dde6f0}tr:nth-child(even){background:#f4f4f4}"
         "img{max-width:48%;margin:4px;border:1px solid #ccc}")
MODEL_SECTION = "Whole models"
MODEL_LEGEND = ("Each row is a whole backbone (`lightformer bench --modes model-fwd+bwd`): the architecture's mixer "
                "in each layer (runs as n×mixer), its options and the position scheme; pre-norm blocks, GELU MLP "
                "(4·D), forward(+backward) of random embeddings [B, T, D]. Cells: median time (ms) / peak RSS growth "
                "(MiB) and the time and memory ratios to the all-softmax model measured in the same run. "
                "Crossover: smallest measured T from which the architecture stays faster than all-softmax.")


def _is_train(t: Table) -> bool:
    return t.key[0] == TRAIN_MODE


def _sections(tables: list[Table]) -> list[tuple[Table, tuple[str, str] | None]]:
    """Each table with the (heading, legend) of the section it opens: the first model table opens "Whole
    models", the first training-step table "Training steps"; ``None`` for the others."""
    out, seen = [], set()
    for t in tables:
        section = (TRAIN_SECTION, TRAIN_LEGEND) if _is_train(t) else (MODEL_SECTION, MODEL_LEGEND) if t.model \
            else None
        out.append((t, section if section and section[0] not in seen else None))
        if section:
            seen.add(section[0])
    return out


def _plot(table: Table, path: Path, metric: int, ylabel: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    drawn = False
    colors = plt.get_cmap("tab20").colors
    for i, (name, points) in enumerate(table.series.items()):
        ts = sorted(t for t in points if points[t][metric] is not None and points[t][metric] > 0)
        if not ts:
            continue
        # 20 colours, then markers tell series apart; peers are dashed
        ax.plot(ts, [points[t][metric] for t in ts], marker="osv^D"[i // 20 % 5], color=colors[i % 20],
                linestyle="--" if "peer" in name else "-", label=name)
        drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no successful measurement", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(table.title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return drawn


def markdown(records: list[dict[str, Any]], tables: list[Table], images: dict[str, list[str]] | None = None) -> str:
    """The Markdown report text; ``images`` maps a table stem to PNG file names to link under it."""
    lines = [machine_line(records), "", "# lightformer bench", "", LEGEND, ""]
    for t, section in _sections(tables):
        if section:
            lines += [f"# {section[0]}", "", section[1], ""]
        lines += [f"## {t.title}", "", "| " + " | ".join(t.header) + " |",
                  "|" + "|".join("---" for _ in t.header) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        lines.append("")
        for img in (images or {}).get(t.stem, []):
            lines += [f"![{img}]({img})", ""]
    if not tables:
        lines.append("No bench records.")
    return "\n".join(lines) + "\n"


def html_page(records: list[dict[str, Any]], tables: list[Table], pngs: dict[str, list[Path]]) -> str:
    """One self-contained HTML page: machine line, tables, PNGs as ``data:image/png;base64`` URIs."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>lightformer bench</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<p><b>{e(machine_line(records))}</b></p>", "<h1>lightformer bench</h1>", f"<p>{e(LEGEND)}</p>"]
    for t, section in _sections(tables):
        if section:
            parts.append(f"<h1>{e(section[0])}</h1><p>{e(section[1])}</p>")
        parts.append(f"<h2>{e(t.title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
        for row in t.rows:
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table><div>")
        for p in pngs.get(t.stem, []):
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{e(p.name)}' src='data:image/png;base64,{data}'>")
        parts.append("</div>")
    if not tables:
        parts.append("<p>No bench records.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(records: Iterable[dict[str, Any]], out_dir: str | os.PathLike[str], *,
                 name: str = "bench") -> dict[str, Path]:
    """Write the Markdown, PNG and HTML reports of ``records`` (any kinds; bench ones are used) into ``out_dir``.

    Returns:
        ``{"markdown": Path, "html": Path, "<png file name>": Path, ...}``.

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    records = list(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(records) + train_tables(records)
    paths: dict[str, Path] = {}
    pngs: dict[str, list[Path]] = {}
    for t in tables:
        if _is_train(t):  # one shape per table: nothing to plot against T
            continue
        for metric, what, ylabel in ((0, "time", "time per run (ms)"), (1, "memory", "peak RSS growth (MiB)")):
            p = out / f"{name}_{t.stem}_{what}.png"
            _plot(t, p, metric, ylabel)
            pngs.setdefault(t.stem, []).append(p)
            paths[p.name] = p
    md = out / f"{name}.md"
    md.write_text(markdown(records, tables, {k: [p.name for p in v] for k, v in pngs.items()}))
    page = out / f"{name}.html"
    page.write_text(html_page(records, tables, pngs))
    paths["markdown"] = md
    paths["html"] = page
    return paths
