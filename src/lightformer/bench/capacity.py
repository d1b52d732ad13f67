"""One capacity cell in a fresh process: ``python -m lightformer.bench.capacity '<CapacityCell JSON>'``.

A cell is one (task, mixer, seed): the same model, data, seed and budget as every other mixer of the sweep. It
trains the model once per learning rate of the grid (each run with the full budget), keeps the run whose
validation value of the task's primary metric is best (Zoology and MAD both report the best of a grid), and
evaluates that model on the task's test set. It prints one line ``LIGHTFORMER_RECORD {json}``: a
``kind: "capacity"`` record (``lightformer.bench.results.capacity_record``).

A cell that runs out of memory (``MemoryError``, an allocation failure, or the address-space cap
``max_memory_mib``) reports ``oom``; a mixer that cannot take the task (e.g. a causal-only mixer on a
bidirectional task, or a length limit) ``unsupported``; any other exception ``error`` with its text.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

#: Identifying fields of a cell: two cells with equal keys measure the same thing (resume key).
KEY_FIELDS = ("task", "task_options", "mixer", "mixer_options", "model", "train", "lrs", "seed", "eval_n")


@dataclass(frozen=True)
class CapacityCell:
    """One (task, mixer, seed) of a capacity sweep.

    Attributes:
        task, task_options: the registered task and its options.
        mixer, mixer_options: the registered mixer and its options.
        model: ``ModelConfig`` fields other than the mixer (dim, num_layers, num_heads, position, max_len ...).
        train: ``TrainConfig`` fields (batch_size, max_steps, max_time, warmup_steps, weight_decay ...); ``lr`` and
            ``min_lr`` come from ``lrs`` (min_lr = lr / 10).
        lrs: the learning-rate grid; the best on validation is kept.
        seed: the run seed (model init, batch stream, dropout); the task's data seed is in ``task_options``.
        eval_n: examples (or LM windows) in the validation and the test set.
        threads: torch intra-op threads; timeout_s: wall-clock limit of the whole cell (s);
        max_memory_mib: address-space headroom after imports (MiB), ``None`` = unlimited.
    """

    task: str
    task_options: dict[str, Any]
    mixer: str
    mixer_options: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    lrs: tuple[float, ...]
    seed: int = 0
    eval_n: int = 512
    threads: int = 2
    timeout_s: float = 3600.0
    max_memory_mib: float | None = None
    plugins: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return capacity_key(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CapacityCell":
        data = json.loads(text)
        data["lrs"] = tuple(data["lrs"])
        data["plugins"] = tuple(data.get("plugins", ()))
        return cls(**data)


def capacity_key(record: dict[str, Any]) -> str:
    """Canonical JSON of the identifying fields of a cell or a capacity record."""
    return json.dumps({k: (list(record[k]) if k == "lrs" else record[k]) for k in KEY_FIELDS}, sort_keys=True)


def run(cell: CapacityCell) -> dict[str, Any]:
    """Train over the learning-rate grid, choose on validation, evaluate on test; the record (never raises)."""
    import torch

    from ..models.config import ModelConfig
    from ..tasks.base import better
    from ..train.config import RunConfig, TaskSpec, TrainConfig
    from ..train.evaluate import evaluate
    from ..train.trainer import Trainer
    from .cell import _limit_address_space, is_oom
    from .machine import machine_info
    from .plan import load_plugins
    from .results import capacity_record
    from .state_size import state_size

    machine = machine_info()
    rec = capacity_record(cell, machine, status="error")
    try:
        load_plugins(list(cell.plugins))
        torch.set_num_threads(cell.threads)
        if cell.max_memory_mib is not None:
            # AdamW imports torch._dynamo on construction; imported under the cap, the shared objects it maps
            # fail as an ImportError (status error) instead of the training running out of memory (oom)
            import torch._dynamo  # noqa: F401

            _limit_address_space(cell.max_memory_mib)
        task_spec = TaskSpec(cell.task, dict(cell.task_options))
        model = ModelConfig(**cell.model, mixer=cell.mixer, mixer_options=dict(cell.mixer_options))
        task = RunConfig(model, TrainConfig(), task_spec).build_task()
        metric = task.primary_metric
        best = None
        grid = []
        t0 = time.monotonic()
        for lr in cell.lrs:
            train = TrainConfig(**{**cell.train, "lr": lr, "min_lr": lr / 10, "seed": cell.seed,
                                   "eval_interval": cell.train.get("eval_interval", 10**9),
                                   "eval_iters": max(1, cell.eval_n // cell.train.get("batch_size", 16))})
            trainer = Trainer(RunConfig(model, train, task_spec), task=task, log=lambda s: None)
            result = trainer.fit(progress_bar=False)
            value = result.metrics[f"val_{metric}"]
            grid.append({"lr": lr, "val": value, "steps": result.steps, "seconds": round(result.seconds, 2),
                         "history": [{k: h[k] for k in ("step", "seconds", f"val_{metric}") if k in h}
                                     for h in result.history]})
            if best is None or best[1] != best[1] or better(metric, value, best[1]):  # NaN never stays best
                best = (trainer, value, result, lr)
        trainer, value, result, lr = best
        test = evaluate(trainer.model, task, "test", n=cell.eval_n, batch_size=trainer.config.train.batch_size,
                        bf16=trainer.bf16)
        rec.update(status="ok", metric=metric, value=test[metric], val_value=value,
                   metrics={f"test_{k}": v for k, v in test.items() if k != "count"}, lr=lr, lr_grid=grid,
                   steps=result.steps, seconds=result.seconds, total_seconds=time.monotonic() - t0,
                   tokens=result.tokens, scored=result.scored, seq_len=task.seq_len,
                   params=sum(p.numel() for p in trainer.model.parameters()),
                   state_size=state_size(cell.mixer, dict(cell.mixer_options), dim=model.dim,
                                         num_heads=model.num_heads, seq_len=task.seq_len),
                   task_describe=task.describe(), autocast="bf16" if trainer.bf16 else "fp32")
        if hasattr(task, "baselines"):
            rec["baselines"] = task.baselines("test", cell.eval_n)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the record's status
        if isinstance(exc, KeyboardInterrupt):
            raise
        if is_oom(exc):
            rec.update(status="oom", reason=f"{type(exc).__name__}: {exc}"[:500])
        elif isinstance(exc, ValueError):
            rec.update(status="unsupported", reason=str(exc)[:500])
        else:
            rec.update(status="error", reason=traceback.format_exc()[-1500:])
    return rec


def main(argv: list[str] | None = None) -> int:
    from .cell import RECORD_PREFIX

    argv = sys.argv[1:] if argv is None else argv
    cell = CapacityCell.from_json(argv[0])
    rec = run(cell)
    print(RECORD_PREFIX + json.dumps(rec, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
