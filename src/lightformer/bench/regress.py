"""``lightformer bench --compare-to baseline.jsonl``: per-cell time ratios current / baseline, for regressions.

Cells are matched by key (impl, mixer, options, T, batch, dim, heads, dtype, mode, causal, threads, and
num_layers for whole-model cells); only cells with status ``ok`` in both files are compared. A ratio above
``threshold`` is a regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .grid import cell_key
from .results import bench_records


@dataclass
class Regression:
    """Compared cells: rows of (label, seq_len, mode, dtype, causal, current_ms, baseline_ms, ratio)."""

    threshold: float
    rows: list[tuple[str, int, str, str, bool, float, float, float]] = field(default_factory=list)
    only_current: int = 0
    only_baseline: int = 0

    @property
    def regressions(self) -> list[tuple]:
        return [r for r in self.rows if r[-1] > self.threshold]

    @property
    def failed(self) -> bool:
        """True when any cell is slower than ``threshold`` × baseline."""
        return bool(self.regressions)

    def format(self) -> str:
        lines = [f"{'implementation':<28} {'T':>7} {'mode':<8} {'dtype':<5} {'causal':<6} {'now ms':>10} "
                 f"{'base ms':>10} {'ratio':>6}"]
        for label, t, mode, dtype, causal, cur, base, ratio in self.rows:
            flag = "  SLOWER" if ratio > self.threshold else ""
            lines.append(f"{label:<28} {t:>7} {mode:<8} {dtype:<5} {str(causal):<6} {cur:>10.4g} {base:>10.4g} "
                         f"{ratio:>6.2f}{flag}")
        lines.append(f"{len(self.rows)} cells compared, {len(self.regressions)} above {self.threshold:g}× "
                     f"({self.only_current} only in current, {self.only_baseline} only in baseline)")
        return "\n".join(lines)


def compare_to(current: Iterable[dict[str, Any]], baseline: Iterable[dict[str, Any]],
               threshold: float = 1.25) -> Regression:
    """Time ratios (current / baseline) of the cells measured ok in both record lists.

    Raises:
        ValueError: ``threshold`` not positive.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    cur = {cell_key(r): r for r in bench_records(current) if r.get("status") == "ok"}
    base = {cell_key(r): r for r in bench_records(baseline) if r.get("status") == "ok"}
    out = Regression(threshold, only_current=len(cur.keys() - base.keys()),
                     only_baseline=len(base.keys() - cur.keys()))
    for k in sorted(cur.keys() & base.keys()):
        c, b = cur[k], base[k]
        label = c.get("label") or c["mixer"]
        out.rows.append((label, c["seq_len"], c["mode"], c["dtype"], bool(c["causal"]), c["time_ms"], b["time_ms"],
                         c["time_ms"] / b["time_ms"]))
    out.rows.sort(key=lambda row: (row[0], row[2], row[3], row[4], row[1]))
    return out
