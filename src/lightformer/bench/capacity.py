"""One capacity cell in a fresh process: ``python -m lightformer.bench.capacity '<CapacityCell JSON>'``.

A cell is one (task, architecture, seed): the same model, data, seed and budget as every other architecture of the
sweep. An architecture is a registered mixer (every layer) or a schedule preset (``masformer``, ``mamba_hybrid``:
``models/architecture.py``), built as ``ModelConfig(schedule=<preset>, mixer=<its base mixer>)`` so the cell's
``mixer_options`` reach the preset's base layers. It trains the model once per learning rate of the grid (each run
with the full budget), keeps the run whose validation value of the task's primary metric is best (Zoology and MAD
both report the best of a grid), and evaluates that model on the task's test set. It prints one line
``LIGHTFORMER_RECORD {json}``: a ``kind: "capacity"`` record (``lightformer.bench.results.capacity_record``).

A cell that runs out of memory (``MemoryError``, an allocation failure, or the address-space cap
``max_memory_mib``) reports ``oom``; a mixer that cannot take the task (e.g. a causal-only mixer on a
bidirectional task, or a length limit) ``unsupported``; any other exception ``error`` with its text. A learning
rate whose training loss (or validation metric) becomes NaN or infinite has diverged: training stops there and its
``lr_grid`` entry says at which step (``diverged_at``); the best learning rate is chosen among the others, and when
every one diverged the record's status is ``diverged`` (``diverged_at``: the earliest such step), not a value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models.config import ModelConfig

#: Identifying fields of a cell: two cells with equal keys measure the same thing (resume key); a non-empty
#: ``label`` is part of the key too (left out when empty, so unlabelled records keep their keys).
KEY_FIELDS = ("task", "task_options", "mixer", "mixer_options", "model", "train", "lrs", "seed", "eval_n")


@dataclass(frozen=True)
class CapacityCell:
    """One (task, architecture, seed) of a capacity sweep.

    Attributes:
        task, task_options: the registered task and its options.
        mixer, mixer_options: the architecture (a registered mixer or a schedule preset) and the options of its
            (base) mixer.
        model: ``ModelConfig`` fields other than the mixer (dim, num_layers, num_heads, position, max_len, and any
            block, ffn, norm, value_residual ... given with ``suite --model``).
        train: ``TrainConfig`` fields (batch_size, max_steps, max_time, warmup_steps, weight_decay ...); ``lr`` and
            ``min_lr`` come from ``lrs`` (min_lr = lr / 10).
        lrs: the learning-rate grid; the best on validation is kept.
        seed: the run seed (model init, batch stream, dropout); the task's data seed is in ``task_options``.
        eval_n: examples (or LM windows) in the validation and the test set.
        threads: torch intra-op threads; timeout_s: wall-clock limit of the whole cell (s);
        max_memory_mib: address-space headroom after imports (MiB), ``None`` = unlimited.
        label: a name for the run's variant (``suite --label``), kept in the record and the key, so the same task
            and architecture with another block, FFN or norm is another cell and another leaderboard row.
        device: ``"cpu"`` or ``"cuda"`` (resolved by ``suite --device``); part of the key when not ``"cpu"``, so
            a GPU run of a cell is another cell.
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
    label: str = ""
    device: str = "cpu"

    @property
    def key(self) -> str:
        return capacity_key(dataclasses.asdict(self))

    def model_config(self) -> "ModelConfig":
        """The cell's ``ModelConfig`` before the task sets its vocabulary: ``model`` plus the architecture's fields
        (``models.architecture.model_fields``; a preset also sets its base mixer, which takes ``mixer_options``).

        Raises:
            ValueError / TypeError: as ``ModelConfig`` (an unknown field, option or name)."""
        from ..models.architecture import base_mixer, model_fields
        from ..models.config import ModelConfig

        fields = {**model_fields(self.mixer), "mixer": base_mixer(self.mixer)}
        return ModelConfig(**{**self.model, **fields}, mixer_options=dict(self.mixer_options))

    def layer_mixers(self) -> list[str] | None:
        """The mixer of each layer of the cell's model, read from its schedule without building the layers' configs
        (a layer may name a mixer the task cannot take); ``None`` when the schedule does not resolve."""
        from ..models.architecture import base_mixer, model_fields
        from ..models.config import ModelConfig
        from ..models.schedule import resolve_schedule
        from ..models.spec import LayerSpec

        try:
            schedule = {**self.model, **model_fields(self.mixer)}.get("schedule", "")
            layers = resolve_schedule(schedule, LayerSpec(mixer=base_mixer(self.mixer)),
                                      self.model.get("num_layers", ModelConfig.num_layers))
        except (ValueError, TypeError):
            return None
        return [layer.mixer for layer in layers]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CapacityCell":
        data = json.loads(text)
        data["lrs"] = tuple(data["lrs"])
        data["plugins"] = tuple(data.get("plugins", ()))
        return cls(**data)


def capacity_key(record: dict[str, Any]) -> str:
    """Canonical JSON of the identifying fields of a cell or a capacity record (``label`` when it is set)."""
    key = {k: (list(record[k]) if k == "lrs" else record[k]) for k in KEY_FIELDS}
    if record.get("label"):
        key["label"] = record["label"]
    if record.get("device", "cpu") != "cpu":
        key["device"] = record["device"]
    return json.dumps(key, sort_keys=True)


def run(cell: CapacityCell) -> dict[str, Any]:
    """Train over the learning-rate grid, choose on validation, evaluate on test; the record (never raises)."""
    import torch

    from ..tasks.base import better
    from ..train.config import RunConfig, TaskSpec, TrainConfig
    from ..train.evaluate import evaluate
    from ..train.trainer import Trainer
    from .cell import _limit_address_space, is_oom
    from .machine import machine_info
    from .plan import load_plugins
    from .results import capacity_record
    from .state_size import model_state_size

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
        model = cell.model_config()
        task = RunConfig(model, TrainConfig(), task_spec).build_task()
        metric = task.primary_metric
        best = None
        grid = []
        t0 = time.monotonic()
        for lr in cell.lrs:
            train = TrainConfig(**{**cell.train, "lr": lr, "min_lr": lr / 10, "seed": cell.seed,
                                   "eval_interval": cell.train.get("eval_interval", 10**9),
                                   "eval_iters": max(1, cell.eval_n // cell.train.get("batch_size", 16))})
            trainer = Trainer(RunConfig(model, train, task_spec), task=task, log=lambda s: None, device=cell.device)
            result = trainer.fit(progress_bar=False)
            value = result.metrics[f"val_{metric}"]
            # a non-finite validation value without a non-finite training loss diverged by that evaluation
            diverged = result.diverged_at if result.diverged_at is not None or math.isfinite(value) \
                else result.history[-1]["step"]
            grid.append({"lr": lr, "val": value, "steps": result.steps, "seconds": round(result.seconds, 2),
                         "diverged_at": diverged,
                         "history": [{k: h[k] for k in ("step", "seconds", "train_loss", f"val_{metric}") if k in h}
                                     for h in result.history]})
            if diverged is None and (best is None or better(metric, value, best[1])):
                best = (trainer, value, result, lr)
        rec.update(metric=metric, lr_grid=grid, total_seconds=time.monotonic() - t0, seq_len=task.seq_len,
                   task_describe=task.describe(), **_state_fields(model, task.seq_len, model_state_size))
        if best is None:
            first = min(grid, key=lambda g: g["diverged_at"])
            rec.update(status="diverged", diverged_at=first["diverged_at"],
                       reason="the training loss became NaN or infinite at every learning rate: " + ", ".join(
                           f"lr {g['lr']:g} at step {g['diverged_at']}" for g in grid))
            return rec
        trainer, value, result, lr = best
        test = evaluate(trainer.model, task, "test", n=cell.eval_n, batch_size=trainer.config.train.batch_size,
                        bf16=trainer.bf16, device=trainer.device)
        rec.update(status="ok", value=test[metric], val_value=value,
                   metrics={f"test_{k}": v for k, v in test.items() if k != "count"}, lr=lr,
                   steps=result.steps, seconds=result.seconds, total_seconds=time.monotonic() - t0,
                   tokens=result.tokens, scored=result.scored,
                   params=sum(p.numel() for p in trainer.model.parameters()),
                   autocast="bf16" if trainer.bf16 else "fp32")
        if not math.isfinite(test[metric]):
            rec.update(status="diverged", diverged_at=result.steps,
                       reason=f"the test {metric} of lr {lr:g} is {test[metric]} after {result.steps} steps")
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


def _state_fields(model: "ModelConfig", seq_len: int, count: Any) -> dict[str, Any]:
    """``state_size`` (floats per layer and sequence, the mean over the layers: a plain mixer's own count),
    ``state_size_total`` (over every layer) and ``state_size_reason`` (why they are ``None``)."""
    total, reason = count([(s.mixer, dict(s.mixer_options)) for s in model.layer_specs()], dim=model.dim,
                          num_heads=model.num_heads, seq_len=seq_len)
    if total is None:
        return {"state_size": None, "state_size_total": None, "state_size_reason": reason}
    per_layer = total / model.num_layers
    return {"state_size": int(per_layer) if per_layer.is_integer() else per_layer, "state_size_total": total,
            "state_size_reason": None}


def main(argv: list[str] | None = None) -> int:
    from .cell import RECORD_PREFIX

    argv = sys.argv[1:] if argv is None else argv
    cell = CapacityCell.from_json(argv[0])
    rec = run(cell)
    print(RECORD_PREFIX + json.dumps(rec, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
