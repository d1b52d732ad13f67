"""``compare``'s summary: per mixer the mean ± spread over seeds of its LM quality and its recall, its bench cost, the
Pareto front, ties, and the verdict sentence that leads the printed table.

Spread = half the range over seeds ((max − min) / 2); with two seeds it equals the standard error of the mean
(s/√2 with s = |a − b|/√2), with more it bounds it from above. Two mixers are tied on a metric when their means
differ by no more than twice the standard error of the difference, 2·sqrt(spread_a² + spread_b²) (about a 95 %
interval under normal noise): a ranking inside the seed noise is not a verdict.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ..tasks.base import direction


def mean_spread(values: list[float]) -> tuple[float | None, float]:
    """(mean, half range) of ``values``; ``(None, 0.0)`` when empty."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, 0.0
    return statistics.fmean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def tied(a: tuple[float | None, float], b: tuple[float | None, float]) -> bool:
    """True when two (mean, spread) pairs differ by no more than 2·sqrt(spread_a² + spread_b²)."""
    if a[0] is None or b[0] is None:
        return False
    return abs(a[0] - b[0]) <= 2.0 * math.hypot(a[1], b[1])


def ranking(rows: list[dict[str, Any]], metric: str) -> tuple[list[str], dict[str, bool]]:
    """Mixer names best first on ``metric`` (rows hold ``metric`` and ``metric + '_spread'``), and per mixer
    whether it is tied with the best."""
    sign = 1 if direction(metric) == "min" else -1
    measured = [r for r in rows if r.get(metric) is not None]
    order = sorted(measured, key=lambda r: sign * r[metric])
    if not order:
        return [], {}
    best = (order[0][metric], order[0].get(f"{metric}_spread", 0.0))
    ties = {r["mixer"]: r is not order[0] and tied(best, (r[metric], r.get(f"{metric}_spread", 0.0)))
            for r in order}
    return [r["mixer"] for r in order], ties


def pareto_front(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> set[str]:
    """Names of the rows not dominated on ``keys`` (each in its metric's direction; ``time_ms`` and ``mem_mib``
    minimised; a missing value counts as the worst)."""
    def vec(r: dict[str, Any]) -> tuple[float, ...]:
        out = []
        for k in keys:
            v = r.get(k)
            sign = -1.0 if direction(k) == "max" else 1.0
            out.append(math.inf if v is None else sign * v)
        return tuple(out)

    front = set()
    for r in rows:
        v = vec(r)
        if not any(all(a <= b for a, b in zip(vec(o), v)) and vec(o) != v for o in rows if o is not r):
            front.add(r["mixer"])
    return front


def verdict(rows: list[dict[str, Any]], *, report_len: int, recall_len: int | None, baseline: str = "softmax",
            unit: str = "byte") -> str:
    """One paragraph: the top pick on LM quality (with its ties), on recall, the fastest at ``report_len``, and
    where the exact ``baseline`` stands; ties are named as such."""
    parts = []
    order, ties = ranking(rows, "val_bpc")
    by = {r["mixer"]: r for r in rows}
    if order:
        best = order[0]
        tie_names = [m for m in order if ties.get(m)]
        text = f"best LM quality: **{best}** ({by[best]['val_bpc']:.3f} ± {by[best]['val_bpc_spread']:.3f} " \
               f"bits/{unit})"
        if tie_names:
            text += f", tied within the seed spread with {', '.join(tie_names)}"
        parts.append(text)
        if baseline in order:
            place = order.index(baseline) + 1
            parts.append(f"the exact baseline `{baseline}` is {_ordinal(place)} of {len(order)}"
                         + (" (tied with the best)" if ties.get(baseline) or place == 1 and tie_names else ""))
    r_order, r_ties = ranking(rows, "recall")
    if r_order and recall_len:
        best = r_order[0]
        tie_names = [m for m in r_order if r_ties.get(m)]
        parts.append(f"best recall (MQAR at T={recall_len}): **{best}** ({100 * by[best]['recall']:.1f}%)"
                     + (f", tied with {', '.join(tie_names)}" if tie_names else ""))
    timed = [r for r in rows if r.get("time_ms") is not None]
    if timed:
        fastest = min(timed, key=lambda r: r["time_ms"])
        parts.append(f"fastest at T={report_len}: **{fastest['mixer']}** ({fastest['time_ms']:.0f} ms fwd+bwd)")
    return "Verdict: " + "; ".join(parts) + "." if parts else "Verdict: nothing was measured."


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def format_table(rows: list[dict[str, Any]], report_len: int, unit: str, recall_len: int | None) -> str:
    """The Markdown table, best LM quality first; ``≈`` marks a value tied with the best of its column."""
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    _, bpc_ties = ranking(rows, "val_bpc")
    r_order, r_ties = ranking(rows, "recall")
    b_order, _ = ranking(rows, "val_bpc")
    lines = [f"| mixer | options | position | val bits/{unit} (mean ± spread) | seeds | train steps | "
             f"recall @T={recall_len} (%) | fwd+bwd ms @T={report_len} | MiB @T={report_len} | × SDPA time | "
             "Pareto |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(b_order)}
    for r in sorted(rows, key=lambda r: order.get(r["mixer"], len(order))):
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        bpc = "—" if r.get("val_bpc") is None else f"{r['val_bpc']:.4f} ± {r['val_bpc_spread']:.4f}"
        if b_order and r["mixer"] == b_order[0]:
            bpc = f"**{bpc}**"
        elif bpc_ties.get(r["mixer"]):
            bpc += " ≈"
        rec = "—" if r.get("recall") is None else f"{100 * r['recall']:.1f} ± {100 * r['recall_spread']:.1f}"
        if r_order and r["mixer"] == r_order[0]:
            rec = f"**{rec}**"
        elif r_ties.get(r["mixer"]):
            rec += " ≈"
        lines.append(f"| {r['mixer']} | {opts} | {r.get('position', '—')} | {bpc} | {r.get('seeds', 0)} | "
                     f"{f(r.get('steps'), '.0f')} | {rec} | {f(r.get('time_ms'), '.1f')} | "
                     f"{f(r.get('mem_mib'), '.1f')} | {f(r.get('vs_sdpa'), '.2f')} | {'★' if r['pareto'] else ''} |")
    return "\n".join(lines)
