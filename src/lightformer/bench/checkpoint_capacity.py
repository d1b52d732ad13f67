"""``lightformer suite --checkpoints DIR,...``: trained or compressed checkpoints on the capacity leaderboard.

A checkpoint is not trained again: it is loaded as ``eval`` loads it (``train.checkpoint.load_trained``, so a
``compress``-ed one runs compressed: quantised, pruned, factorised, token-merged) and its task's test metrics are
measured on the task's test set of ``eval_n`` examples (default: the suite recipe's, so the row is comparable with
the suite's trained cells of that task). The result is a ``kind: "capacity"`` record like a suite cell's: the
checkpoint's task and options, its architecture, model and training settings (``lrs`` = the one learning rate it
was trained with), seed, ``steps`` and ``seconds`` of its training, and a ``label`` naming the variant (default: the
compression method and its options, or the run directory for an uncompressed checkpoint), plus ``checkpoint``,
``method`` and ``method_options``. Re-running skips a checkpoint already in the file unless ``force``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class _CheckpointCell:
    """The fields ``results.capacity_record`` reads, filled from a checkpoint."""

    task: str
    task_options: dict[str, Any]
    mixer: str
    mixer_options: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    lrs: tuple[float, ...]
    seed: int
    eval_n: int
    threads: int
    label: str
    layers: list[str] | None = field(default=None)

    def layer_mixers(self) -> list[str] | None:
        return self.layers


def default_label(path: str, method: str | None, options: dict[str, Any] | None) -> str:
    """``"tome (r=[392, 0])"`` for a compressed checkpoint (options left at ``[]``/``None`` not shown), else the run
    directory's name."""
    if method is None:
        p = Path(path).resolve()
        return p.parent.name if p.name == "checkpoint" else p.name
    shown = {k: v for k, v in (options or {}).items() if v not in ([], (), None)}
    return method + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + ")" if shown else "")


def checkpoint_capacity_record(path: str, *, eval_n: int | None = None, label: str | None = None,
                               threads: int = 1) -> dict[str, Any]:
    """The capacity record of the checkpoint at ``path`` (see the module docstring).

    Raises:
        FileNotFoundError: no checkpoint at ``path``. ValueError: a non-positive ``eval_n``.
    """
    import torch

    from ..train.checkpoint import load_trained, locate
    from ..train.evaluate import evaluate
    from .capacity import _state_fields
    from .machine import machine_info
    from .recipes import recipe
    from .results import capacity_record
    from .state_size import model_state_size

    if eval_n is not None and (isinstance(eval_n, bool) or not isinstance(eval_n, int) or eval_n <= 0):
        raise ValueError(f"eval_n must be a positive int, got {eval_n!r}")
    folder = locate(path)
    torch.set_num_threads(threads)
    model, task, run_config, state = load_trained(folder)
    compression = state.get("compression") or {}
    method, options = compression.get("method"), compression.get("options")
    mc, tc = run_config.model, run_config.train
    n = eval_n or recipe(task.name).eval_n
    train = {k: v for k, v in dataclasses.asdict(tc).items()
             if k in ("batch_size", "max_steps", "warmup_steps", "weight_decay", "optimizer", "bf16")}
    train["max_time"] = tc.max_seconds  # seconds, as suite records keep it (the config may say "9.5m")
    cell = _CheckpointCell(task=task.name, task_options=task.options(), mixer=mc.architecture,
                           mixer_options=mc.to_dict()["mixer_options"],
                           model={k: v for k, v in mc.to_dict().items() if k not in ("vocab_size", "mixer",
                                                                                    "mixer_options")},
                           train=train,
                           lrs=(tc.lr,), seed=tc.seed, eval_n=n, threads=threads,
                           label=label or default_label(str(folder), method, options),
                           layers=[spec.mixer for spec in mc.layer_specs()])
    rec = capacity_record(cell, machine_info(), status="ok")
    metric = task.primary_metric
    t0 = time.monotonic()
    test = evaluate(model, task, "test", n=n, batch_size=tc.batch_size)

    rec.update(metric=metric, value=test[metric], metrics={f"test_{k}": v for k, v in test.items() if k != "count"},
               lr=tc.lr, steps=state.get("step"), seconds=state.get("elapsed"), tokens=state.get("tokens"),
               scored=state.get("scored"), seq_len=task.seq_len, params=sum(p.numel() for p in model.parameters()),
               total_seconds=time.monotonic() - t0, autocast="fp32", checkpoint=str(folder), method=method,
               method_options=options, task_describe=task.describe(),
               **_state_fields(mc, task.seq_len, model_state_size))
    return rec


def run_checkpoints(paths: list[str], out_path: str, *, eval_n: int | None = None, labels: list[str] | None = None,
                    threads: int = 1, force: bool = False, log: Any = None) -> list[dict[str, Any]]:
    """A capacity record per checkpoint, appended to ``out_path``; one already there (same checkpoint, label and
    evaluation size) is returned from the file unless ``force``.

    Raises:
        ValueError: no checkpoint, or ``labels`` not one per checkpoint.
    """
    from .results import append_record, load_records

    if not paths:
        raise ValueError("checkpoints: give at least one checkpoint directory")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"labels: {len(labels)} given for {len(paths)} checkpoints")
    have = {} if force else {(r.get("checkpoint"), r.get("label"), r.get("eval_n")): r
                             for r in load_records(out_path) if r.get("kind") == "capacity" and r.get("checkpoint")}
    out = []
    for i, path in enumerate(paths):
        from ..train.checkpoint import locate

        folder = str(locate(path))
        found = [r for (ck, lab, n), r in have.items()
                 if ck == folder and (labels is None or lab == labels[i]) and (eval_n is None or n == eval_n)]
        if found:
            out.append(found[-1])
            continue
        rec = checkpoint_capacity_record(path, eval_n=eval_n, label=labels[i] if labels else None, threads=threads)
        append_record(out_path, rec)
        if log:
            log(f"{rec['task']} / {rec['label']}: {rec['metric']} {rec['value']:.4f} ({rec['eval_n']} test examples)")
        out.append(rec)
    return out
