"""``lightformer compare``: train the same LM with each mixer for the same time budget on the same corpus, measure
each mixer's speed and memory, and report quality against speed against memory with the Pareto front marked.

Every mixer gets the identical model (``COMPARE_MODEL``), data, seed, batch and wall-clock budget; only the mixer
differs. Validation bpc (bits per byte/char) is measured on the same fixed validation windows. The speed/memory
sweep is a ``bench`` grid over the same mixers with the same options (plus torch SDPA), so ``advise`` can combine
the two: ``compare`` writes ``kind: "quality"`` records into the same JSON-lines file as the bench records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from ..models.config import ModelConfig
from ..tasks.text import Corpus
from ..train.config import RunConfig, TrainConfig
from .grid import LIGHTFORMER, Grid
from .machine import machine_info
from .results import append_record, bench_records, load_records
from .runner import run_sweep

#: The causal mixers compared by default: the exact baseline and one of each efficient family.
DEFAULT_MIXERS = ("softmax", "sliding_window", "linear", "performer", "linear_relu")

#: Options sized for the compare model's 256-token context (a window of 256 would be plain softmax there).
COMPARE_OPTIONS: dict[str, dict[str, Any]] = {
    "sliding_window": {"window": 64},
    "longformer": {"window": 64, "num_global": 4},
    "dilated_window": {"window": 32, "dilation": 2},
    "performer": {"num_features": 64},
    "reformer_lsh": {"n_hashes": 2, "bucket_size": 32},
    "bigbird": {"block_size": 32, "num_random": 1},
    "aft_local": {"window": 64},
}

#: The model every mixer is trained in: 4 layers of width 128, context 256.
COMPARE_MODEL = {"dim": 128, "num_layers": 4, "num_heads": 4, "max_len": 256, "position": "learned"}
COMPARE_TRAIN = {"batch_size": 16, "block_size": 256, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 50,
                 "bf16": True, "eval_interval": 10**9, "eval_iters": 40, "max_steps": None}


def mixer_options(mixer: str) -> dict[str, Any]:
    return dict(COMPARE_OPTIONS.get(mixer, {}))


def train_one(mixer: str, corpus: Corpus, *, budget_s: float, seed: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Train the compare model with ``mixer`` for ``budget_s`` seconds; returns a ``kind: "quality"`` record."""
    from ..train.trainer import Trainer

    options = mixer_options(mixer)
    model = ModelConfig(**COMPARE_MODEL, mixer=mixer, mixer_options=options)
    train = TrainConfig(**COMPARE_TRAIN, data=corpus.name, tokenizer=corpus.tokenizer.kind, max_time=budget_s,
                        seed=seed)
    trainer = Trainer(RunConfig(model, train), corpus=corpus, log=log)
    result = trainer.fit(progress_bar=True)
    return {"kind": "quality", "mixer": mixer, "options": options, "val_loss": result.val_loss,
            "val_bpc": result.val_bpc, "steps": result.steps, "tokens": result.tokens, "seconds": result.seconds,
            "tokens_per_s": result.tokens / result.seconds if result.seconds else None, "data": corpus.name,
            "data_sha256": corpus.sha256, "tokenizer": corpus.tokenizer.kind,
            "model": dataclasses.asdict(trainer.config.model), "budget_s": budget_s, **machine_info(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}


def pareto_front(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> set[str]:
    """Names of the rows not dominated on ``keys`` (all minimised; a missing value counts as +inf)."""
    def vec(r):
        return tuple(math.inf if r.get(k) is None else r[k] for k in keys)

    front = set()
    for r in rows:
        v = vec(r)
        if not any(all(a <= b for a, b in zip(vec(o), v)) and vec(o) != v for o in rows if o is not r):
            front.add(r["mixer"])
    return front


def summary_rows(records: list[dict[str, Any]], mixers: list[str], report_len: int) -> list[dict[str, Any]]:
    """One row per mixer: its quality record and its bench cell (lightformer, causal, fwd+bwd) at ``report_len``."""
    bench = [r for r in bench_records(records) if r.get("impl") == LIGHTFORMER and r.get("seq_len") == report_len
             and r.get("mode") == "fwd+bwd" and r.get("causal")]
    sdpa = [r for r in bench_records(records) if r.get("impl") == "sdpa" and r.get("seq_len") == report_len
            and r.get("mode") == "fwd+bwd" and r.get("causal") and r.get("status") == "ok"]
    rows = []
    for m in mixers:
        q = [r for r in records if r.get("kind") == "quality" and r.get("mixer") == m]
        b = [r for r in bench if r["mixer"] == m]
        row: dict[str, Any] = {"mixer": m, "options": mixer_options(m)}
        if q:
            row.update(val_bpc=q[-1]["val_bpc"], val_loss=q[-1]["val_loss"], steps=q[-1]["steps"],
                       train_tokens_per_s=q[-1].get("tokens_per_s"))
        if b and b[-1]["status"] == "ok":
            row.update(time_ms=b[-1]["time_ms"], mem_mib=b[-1]["mem_mib"])
            if sdpa:
                row["vs_sdpa"] = b[-1]["time_ms"] / sdpa[-1]["time_ms"]
        elif b:
            row["status"] = b[-1]["status"]
        rows.append(row)
    front = pareto_front(rows, ("val_bpc", "time_ms", "mem_mib"))
    for row in rows:
        row["pareto"] = row["mixer"] in front
    return rows


def format_table(rows: list[dict[str, Any]], report_len: int, unit: str) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"| mixer | options | val bits/{unit} | val loss (nats) | train steps | fwd+bwd ms @T={report_len} | "
             f"MiB @T={report_len} | × SDPA time | Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.get("val_bpc") is None, r.get("val_bpc") or 0.0)):
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        lines.append(f"| {r['mixer']} | {opts} | {f(r.get('val_bpc'), '.4f')} | {f(r.get('val_loss'), '.4f')} | "
                     f"{f(r.get('steps'), 'd')} | {f(r.get('time_ms'), '.1f')} | {f(r.get('mem_mib'), '.1f')} | "
                     f"{f(r.get('vs_sdpa'), '.2f')} | {'★' if r['pareto'] else ''} |")
    return "\n".join(lines)


def plot_front(rows: list[dict[str, Any]], path: Path, report_len: int, unit: str) -> None:
    """Scatter of validation bpc against fwd+bwd time at ``report_len``, Pareto-optimal mixers filled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.get("val_bpc") is not None and r.get("time_ms") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in pts:
        ax.scatter(r["time_ms"], r["val_bpc"], s=40 + r["mem_mib"] / 4 if r.get("mem_mib") else 40,
                   marker="o", facecolors="C0" if r["pareto"] else "none", edgecolors="C0")
        ax.annotate(r["mixer"], (r["time_ms"], r["val_bpc"]), textcoords="offset points", xytext=(6, 4))
    front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["time_ms"])
    if len(front) > 1:
        ax.plot([r["time_ms"] for r in front], [r["val_bpc"] for r in front], "C0--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"forward+backward time at T={report_len} (ms, log; marker area ~ memory)")
    ax.set_ylabel(f"validation bits per {unit}")
    ax.set_title("quality vs speed (filled = Pareto-optimal over quality, time, memory)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_compare(mixers: list[str], *, data: str = "stdlib", tokenizer: str | None = None, budget_s: float = 120.0,
                seq_lens: list[int] | None = None, report_len: int | None = None, out_dir: str = "results/compare",
                seed: int = 1337, repeats: int = 3, timeout_s: float = 300.0, threads: int | None = None,
                retrain: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, bench and report. Returns ``{"rows": [...], "markdown": path, "html": path, "results": path}``.

    Raises:
        ValueError: an unknown or non-causal mixer (the LM is causal), or a non-positive budget.
    """
    from .. import MIXERS
    from .report import write_report

    if budget_s <= 0:
        raise ValueError(f"budget must be positive, got {budget_s}")
    for m in mixers:
        if not MIXERS.get(m).capabilities.causal:
            raise ValueError(f"mixers: {m!r} cannot be causal, and compare trains a causal language model")
    seq_lens = seq_lens or [1024, 4096, 16384]
    report_len = report_len or (4096 if 4096 in seq_lens else seq_lens[-1])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "compare.jsonl"
    tokenizer = tokenizer or ("byte" if data == "stdlib" else "char")
    corpus = Corpus.load(data, tokenizer=tokenizer)
    log(f"data: {corpus.describe()}")
    done = {r["mixer"] for r in load_records(results) if r.get("kind") == "quality"
            and r.get("data_sha256") == corpus.sha256 and r.get("budget_s") == budget_s}
    for i, m in enumerate(mixers):
        if m in done and not retrain:
            log(f"[{i + 1}/{len(mixers)}] {m}: quality already measured in {results} (use --retrain to redo)")
            continue
        log(f"[{i + 1}/{len(mixers)}] training {m} {mixer_options(m)} for {budget_s:.0f} s")
        rec = train_one(m, corpus, budget_s=budget_s, seed=seed, log=log)
        append_record(results, rec)
        log(f"  {m}: val {rec['val_bpc']:.4f} bits/{corpus.tokenizer.kind} after {rec['steps']} steps")
    grid = Grid(mixers=list(mixers), seq_lens=seq_lens, causal=[True], modes=["fwd+bwd"], peers=["sdpa"],
                options={m: mixer_options(m) for m in mixers}, repeats=repeats, timeout_s=timeout_s,
                **({"threads": threads} if threads else {})).validate()
    log(f"bench: {len(mixers)} mixers + sdpa at T={seq_lens} (fwd+bwd, causal, fp32, D=512, H=8)")
    run_sweep(grid, results)
    records = load_records(results)
    rows = summary_rows(records, list(mixers), report_len)
    unit = corpus.tokenizer.kind
    table = format_table(rows, report_len, unit)
    paths = write_report(records, out, name="compare_bench")
    plot_front(rows, out / "compare_front.png", report_len, unit)
    import torch

    machine = machine_info()
    head = (f"# lightformer compare\n\nMachine: {machine['cpu']} · {torch.get_num_threads()} threads · torch "
            f"{machine['torch']} · git {machine['git_commit']} · {time.strftime('%Y-%m-%d')}\n\n"
            f"Data: {corpus.describe()}. Each mixer trained the same model ({json.dumps(COMPARE_MODEL)}) for "
            f"{budget_s:.0f} s (bf16 autocast, batch {COMPARE_TRAIN['batch_size']} × {COMPARE_TRAIN['block_size']})."
            f" Speed and memory: fwd+bwd of one mixer layer (D=512, H=8, B=1, fp32, causal), median of {repeats} "
            f"runs, peak RSS growth, in a fresh process per cell.\n\n")
    md = out / "compare.md"
    md.write_text(head + table + "\n\n![quality vs speed](compare_front.png)\n\nFull speed/memory tables: "
                  f"[{paths['markdown'].name}]({paths['markdown'].name})\n")
    log(table)
    log(f"report: {md}  ({paths['html']})")
    return {"rows": rows, "markdown": md, "html": paths["html"], "results": results}
