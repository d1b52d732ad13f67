"""``lightformer compare``: the main job. For each mixer: train the same LM on the same corpus for the same budget
over several seeds, train the same recall probe (MQAR) at the user's length, measure speed and memory, and report
quality and recall against speed and memory, with ties and the Pareto front marked and a verdict first.

- Every mixer gets the identical model (``COMPARE_MODEL``), data, seeds, batch and wall-clock budget; only the
  mixer and its position scheme differ: each mixer gets the best scheme it accepts (RoPE where it can, learned
  absolute positions otherwise), so the exact baseline is not handicapped by a scheme chosen for others.
- LM quality is validation bits per token on the same fixed windows, as mean ± spread over ``seeds``; a difference
  inside the seed noise is a tie (``bench/verdict.py``: within twice the standard error of the difference). Each
  run's validation loss is recorded against wall-clock time, and plotted, so a reader can see whether a ranking is
  an early-training effect.
- Recall: Zoology's MQAR (``tasks/mqar.py``) at ``recall_len`` (default: the largest length the recall budget
  allows, ``recall_length``), with K = T/16 pairs over a 64-token vocabulary, in the suite's probe model.
- Speed/memory: a ``bench`` grid over the same mixers and options (plus torch SDPA), one mixer layer at D=512.
- An architecture may be a schedule preset (``masformer``, ``mamba_hybrid``): it is trained and probed as a whole
  model (``ModelConfig(schedule=<preset>)``, its base mixer taking the options below), named as a whole in the table
  (``ModelConfig.architecture``), and judged causal by ``architecture_capabilities``; a bench cell times one mixer
  layer, so a preset has no speed or memory column here.
  ``compare`` writes ``kind: "quality"`` and ``kind: "capacity"`` records into the same JSON-lines file as the bench
  records, so ``advise`` (and ``advise --task mqar``) can combine them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from ..mixers import MIXERS
from ..models.architecture import architecture_capabilities, base_mixer, model_fields
from ..models.config import ModelConfig
from ..tasks.text import Corpus
from ..train.config import RunConfig, TrainConfig
from ..train.precision import resolve_bf16
from .capacity import CapacityCell, run as run_capacity
from .grid import LIGHTFORMER, Grid
from .machine import machine_info
from .recipes import best_position
from .results import append_record, bench_records, capacity_records, load_records, quality_record
from .runner import run_sweep
from .verdict import format_table, mean_spread, pareto_front, verdict

__all__ = ["DEFAULT_MIXERS", "run_compare", "pareto_front", "recall_length", "summary_rows"]

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

#: The model every mixer is trained in: 4 layers of width 128, context 256 (positions: per mixer).
COMPARE_MODEL = {"dim": 128, "num_layers": 4, "num_heads": 4, "max_len": 256}
COMPARE_TRAIN = {"batch_size": 16, "block_size": 256, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 50,
                 "bf16": "auto", "eval_interval": 100, "eval_iters": 20, "max_steps": None}
#: The recall probe: MQAR with K = T/16 pairs (Zoology's ratio from T=64 to 256) over 64 tokens, in the suite's
#: 2-layer probe model; batch 128 (MQAR learns in far fewer steps with large batches).
RECALL_VOCAB = 64
RECALL_MODEL = {"dim": 64, "num_layers": 2, "num_heads": 2, "ffn_mult": 2.0}
RECALL_TRAIN = {"batch_size": 128, "warmup_steps": 50, "weight_decay": 0.1, "bf16": "auto", "max_steps": None}
RECALL_LR = 3e-3
RECALL_EVAL = 512
#: Recall training seconds that make T=64 learnable for attention; each doubling of T doubles the need.
RECALL_SECONDS_AT_64 = 20.0


def mixer_options(mixer: str) -> dict[str, Any]:
    """Compare's options of ``mixer``; for a schedule preset, those of its base mixer (``base_mixer``)."""
    return dict(COMPARE_OPTIONS.get(mixer, COMPARE_OPTIONS.get(base_mixer(mixer), {})))


def model_config(mixer: str, **fields: Any) -> ModelConfig:
    """The ``ModelConfig`` of architecture ``mixer`` (a mixer or a schedule preset) with ``fields`` and compare's
    options."""
    return ModelConfig(**fields, **{**model_fields(mixer), "mixer": base_mixer(mixer)},
                       mixer_options=mixer_options(mixer))


def recall_length(budget_s: float, max_len: int) -> int:
    """The largest power-of-two length T >= 64 (at most ``max_len``) whose probe fits ``budget_s`` seconds:
    T = 64 at ``RECALL_SECONDS_AT_64`` s, doubling with every doubling of the budget."""
    t = 64
    while t * 2 <= max_len and budget_s >= RECALL_SECONDS_AT_64 * (t * 2) / 64:
        t *= 2
    return t


def recall_cell(mixer: str, seq_len: int, budget_s: float, seed: int) -> CapacityCell:
    """The capacity cell of compare's recall probe for ``mixer`` at ``seq_len`` tokens."""
    model = {**RECALL_MODEL, "position": best_position(mixer), "max_len": seq_len}
    task = {"vocab_size": RECALL_VOCAB, "seq_len": seq_len, "num_kv_pairs": max(1, seq_len // 16)}
    return CapacityCell(task="mqar", task_options=task, mixer=mixer, mixer_options=mixer_options(mixer),
                        model=model, train={**RECALL_TRAIN, "max_time": budget_s}, lrs=(RECALL_LR,), seed=seed,
                        eval_n=RECALL_EVAL, threads=_threads())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def train_lm(mixer: str, corpus: Corpus, *, budget_s: float, seed: int,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Train the compare model with ``mixer`` for ``budget_s`` seconds; returns a ``kind: "quality"`` record."""
    from ..train.trainer import Trainer

    options = mixer_options(mixer)
    position = best_position(mixer)
    model = model_config(mixer, **COMPARE_MODEL, position=position)
    train = TrainConfig(**COMPARE_TRAIN, data=corpus.name, tokenizer=corpus.tokenizer.kind, max_time=budget_s,
                        seed=seed)
    trainer = Trainer(RunConfig(model, train), corpus=corpus, log=log)
    result = trainer.fit(progress_bar=True)
    history = [{k: h[k] for k in ("step", "seconds", "val_loss", "val_bpc")} for h in result.history]
    return quality_record(mixer=trainer.config.model.architecture, options=options, position=position, seed=seed,
                          metrics=result.metrics, steps=result.steps, tokens=result.tokens, seconds=result.seconds,
                          budget_s=budget_s,
                          data=corpus.name, data_sha256=corpus.sha256, tokenizer=corpus.tokenizer.kind,
                          model=dataclasses.asdict(trainer.config.model), history=history, machine=machine_info())


def summary_rows(records: list[dict[str, Any]], mixers: list[str], report_len: int, *, budget_s: float | None = None,
                 data_sha256: str | None = None, recall_len: int | None = None) -> list[dict[str, Any]]:
    """One row per mixer: LM quality and recall (mean ± spread over seeds) and its bench cell (lightformer,
    causal, fwd+bwd) at ``report_len``."""
    bench = [r for r in bench_records(records) if r.get("impl") == LIGHTFORMER and r.get("seq_len") == report_len
             and r.get("mode") == "fwd+bwd" and r.get("causal")]
    sdpa = [r for r in bench_records(records) if r.get("impl") == "sdpa" and r.get("seq_len") == report_len
            and r.get("mode") == "fwd+bwd" and r.get("causal") and r.get("status") == "ok"]
    recall = [r for r in capacity_records(records) if r.get("task") == "mqar" and r.get("status") == "ok"
              and (recall_len is None or r.get("seq_len") == recall_len)]
    rows = []
    for m in mixers:
        q = [r for r in records if r.get("kind") == "quality" and r.get("mixer") == m
             and (budget_s is None or r.get("budget_s") == budget_s)
             and (data_sha256 is None or r.get("data_sha256") == data_sha256)]
        b = [r for r in bench if r["mixer"] == m]
        row: dict[str, Any] = {"mixer": m, "options": mixer_options(m), "position": best_position(m),
                               "seeds": len(q)}
        if q:
            row["val_bpc"], row["val_bpc_spread"] = mean_spread([r["val_bpc"] for r in q])
            row["val_loss"], _ = mean_spread([r["val_loss"] for r in q])
            row["steps"] = sum(r["steps"] for r in q) / len(q)
            row["train_tokens_per_s"] = sum(r.get("tokens_per_s") or 0 for r in q) / len(q)
        rc = [r for r in recall if r["mixer"] == m]
        if rc:
            row["recall"], row["recall_spread"] = mean_spread([r["value"] for r in rc])
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


def plot_front(rows: list[dict[str, Any]], path: Path, report_len: int, unit: str) -> None:
    """Scatter of validation bpc against fwd+bwd time at ``report_len``, Pareto-optimal mixers filled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.get("val_bpc") is not None and r.get("time_ms") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in pts:
        ax.errorbar(r["time_ms"], r["val_bpc"], yerr=r.get("val_bpc_spread", 0.0), fmt="o", capsize=3,
                    mfc="C0" if r["pareto"] else "none", mec="C0", ecolor="C0")
        ax.annotate(r["mixer"], (r["time_ms"], r["val_bpc"]), textcoords="offset points", xytext=(6, 4))
    front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["time_ms"])
    if len(front) > 1:
        ax.plot([r["time_ms"] for r in front], [r["val_bpc"] for r in front], "C0--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"forward+backward time at T={report_len} (ms, log)")
    ax.set_ylabel(f"validation bits per {unit} (mean ± spread over seeds)")
    ax.set_title("quality vs speed (filled = Pareto-optimal over quality, time, memory)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], mixers: list[str], path: Path, unit: str) -> None:
    """Each run's validation bits per token against wall-clock training time, one colour per mixer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(mixers):
        runs = [r for r in records if r.get("kind") == "quality" and r.get("mixer") == m and r.get("history")]
        for j, r in enumerate(runs):
            h = r["history"]
            ax.plot([p["seconds"] for p in h], [p["val_bpc"] for p in h], color=f"C{i % 10}", marker=".",
                    lw=1, alpha=0.9, label=m if j == 0 else None)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"validation bits per {unit}")
    ax.set_title("learning curves: is the ranking an early-training effect?")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_compare(mixers: list[str], *, data: str = "stdlib", tokenizer: str | None = None, budget_s: float = 45.0,
                seeds: list[int] | None = None, recall_budget_s: float | None = None, recall_len: int | None = None,
                seq_lens: list[int] | None = None, report_len: int | None = None, out_dir: str = "results/compare",
                repeats: int = 3, timeout_s: float = 300.0, threads: int | None = None, retrain: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (LM and recall, every seed), bench and report.

    Args:
        budget_s: LM training seconds per (mixer, seed); recall_budget_s: MQAR training seconds per (mixer, seed)
            (default ``budget_s / 2``; 0 = no recall probe); recall_len: the probe's length T (default
            ``recall_length(recall_budget_s, max(seq_lens))``).

    Returns:
        ``{"rows": [...], "verdict": str, "markdown": path, "html": path, "results": path}``.

    Raises:
        ValueError: an unknown or non-causal mixer (the LM is causal), no seeds, or a non-positive budget.
    """
    from .report import write_report

    seeds = [0, 1] if seeds is None else list(seeds)
    if budget_s <= 0:
        raise ValueError(f"budget must be positive, got {budget_s}")
    if not seeds:
        raise ValueError("seeds: give at least one seed (two or more to see the spread)")
    for m in mixers:
        if not architecture_capabilities(m).causal:
            raise ValueError(f"mixers: {m!r} cannot be causal, and compare trains a causal language model")
    seq_lens = seq_lens or [1024, 4096]
    report_len = report_len or (4096 if 4096 in seq_lens else seq_lens[-1])
    recall_budget_s = budget_s / 2 if recall_budget_s is None else recall_budget_s
    if recall_budget_s and recall_len is None:
        recall_len = recall_length(recall_budget_s, max(seq_lens))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "compare.jsonl"
    tokenizer = tokenizer or ("byte" if data == "stdlib" else "char")
    corpus = Corpus.load(data, tokenizer=tokenizer)
    log(f"data: {corpus.describe()}")
    stored = load_records(results)
    done = {(r["mixer"], r.get("seed")) for r in stored if r.get("kind") == "quality"
            and r.get("data_sha256") == corpus.sha256 and r.get("budget_s") == budget_s}
    done_recall = {r["key"] for r in [{"key": _recall_key(r)} for r in capacity_records(stored)]}
    runs = [(m, s) for m in mixers for s in seeds]
    for i, (m, seed) in enumerate(runs):
        if (m, seed) in done and not retrain:
            log(f"[{i + 1}/{len(runs)}] {m} seed {seed}: LM quality already in {results} (--retrain to redo)")
        else:
            log(f"[{i + 1}/{len(runs)}] training {m} {mixer_options(m)} ({best_position(m)} positions), seed {seed}, "
                f"for {budget_s:.0f} s")
            rec = train_lm(m, corpus, budget_s=budget_s, seed=seed, log=log)
            append_record(results, rec)
            log(f"  {m} seed {seed}: val {rec['val_bpc']:.4f} bits/{corpus.tokenizer.kind} after {rec['steps']} steps")
        if recall_budget_s:
            cell = recall_cell(m, recall_len, recall_budget_s, seed)
            if _recall_key(cell) in done_recall and not retrain:
                continue
            log(f"  recall probe: MQAR T={recall_len}, K={recall_len // 16}, {recall_budget_s:.0f} s")
            rec = run_capacity(cell)
            append_record(results, rec)
            shown = f"{100 * rec['value']:.1f}%" if rec["status"] == "ok" else f"{rec['status']} {rec['reason']}"
            log(f"  {m} seed {seed}: recall {shown}")
    benched = [m for m in mixers if m in MIXERS]  # a bench cell is one mixer layer, not a schedule
    if benched:
        grid = Grid(mixers=benched, seq_lens=seq_lens, causal=[True], modes=["fwd+bwd"], peers=["sdpa"],
                    options={m: mixer_options(m) for m in benched}, repeats=repeats, timeout_s=timeout_s,
                    **({"threads": threads} if threads else {})).validate()
        log(f"bench: {len(benched)} mixers + sdpa at T={seq_lens} (fwd+bwd, causal, fp32, D=512, H=8)")
        run_sweep(grid, results)
    records = load_records(results)
    rows = summary_rows(records, list(mixers), report_len, budget_s=budget_s, data_sha256=corpus.sha256,
                        recall_len=recall_len if recall_budget_s else None)
    unit = corpus.tokenizer.kind
    text = verdict(rows, report_len=report_len, recall_len=recall_len if recall_budget_s else None, unit=unit)
    table = format_table(rows, report_len, unit, recall_len if recall_budget_s else None)
    paths = write_report(records, out, name="compare_bench")
    plot_front(rows, out / "compare_front.png", report_len, unit)
    plot_curves(records, list(mixers), out / "compare_curves.png", unit)
    import torch

    machine = machine_info()
    recall_text = (f" Recall: MQAR at T={recall_len} with {recall_len // 16} key-value pairs over {RECALL_VOCAB} "
                   f"tokens, a {RECALL_MODEL['num_layers']}-layer width-{RECALL_MODEL['dim']} model trained "
                   f"{recall_budget_s:.0f} s per seed (batch {RECALL_TRAIN['batch_size']}, lr {RECALL_LR:g}), "
                   f"accuracy on {RECALL_EVAL} test sequences." if recall_budget_s else "")
    head = (f"# lightformer compare\n\nMachine: {machine['cpu']} · {torch.get_num_threads()} threads · torch "
            f"{machine['torch']} · git {machine['git_commit']} · {time.strftime('%Y-%m-%d')}\n\n{text}\n\n"
            f"Data: {corpus.describe()}. Each mixer trained the same model ({json.dumps(COMPARE_MODEL)}; RoPE where "
            f"the mixer accepts it, else learned positions) for {budget_s:.0f} s per seed, seeds {seeds} "
            f"({'bf16 autocast' if resolve_bf16('auto') else 'fp32: this CPU has no native bf16'}, batch {COMPARE_TRAIN['batch_size']} × {COMPARE_TRAIN['block_size']}); ≈ marks a "
            f"value tied with the best (means within 2·sqrt(spread² + spread²), twice the standard error of the "
            f"difference for two seeds).{recall_text} Speed and memory: fwd+bwd of one "
            f"mixer layer (D=512, H=8, B=1, fp32, causal), median of {repeats} runs, peak RSS growth, in a fresh "
            "process per cell" + (f"; the schedule presets ({', '.join(m for m in mixers if m not in MIXERS)}) are "
                                  "whole models and have no single-layer bench cell" if len(benched) < len(mixers)
                                  else "") + ".\n\n")
    md = out / "compare.md"
    md.write_text(head + table + "\n\n![quality vs speed](compare_front.png)\n\n![learning curves]"
                  "(compare_curves.png)\n\nFull speed/memory tables: "
                  f"[{paths['markdown'].name}]({paths['markdown'].name})\n")
    log(text)
    log(table)
    log(f"report: {md}  ({paths['html']})")
    return {"rows": rows, "verdict": text, "markdown": md, "html": paths["html"], "results": results}


def _recall_key(cell_or_record: Any) -> str:
    from .capacity import capacity_key

    data = dataclasses.asdict(cell_or_record) if dataclasses.is_dataclass(cell_or_record) else cell_or_record
    return capacity_key(data)
