"""``lightformer suite``: capacity — what each mixer costs in accuracy on each task, same model, data, seeds and
budget for every mixer.

The sweep is tasks × architectures × seeds; an architecture is a registered mixer (in every layer) or a schedule
preset (``masformer``, ``mamba_hybrid``; ``models/architecture.py``), named in ``--mixers`` alike. Each (task,
architecture, seed) is a ``CapacityCell`` run in its own subprocess
(``python -m lightformer.bench.capacity``): it trains the task's recipe (``bench/recipes.py``) once per learning
rate of the grid, keeps the best on validation and reports the test metric. Records (``kind: "capacity"``) are
appended to a JSON-lines file as soon as each cell is done; re-running skips measured cells unless ``force``; a
cell that fails, runs out of memory or times out is recorded with that status and the sweep goes on.

Mixers by task: a causal task (probe, LM) takes every registered mixer that can be causal; a classification task
(LRA) takes every mixer, bidirectional where it can be and causal where it is causal-only (``tasks.base.
encoder_causal``); a mixer that cannot take the task is recorded as ``unsupported``. A schedule is judged by the
mixers of its layers at the recipe's depth (every one must be causal for a causal task). Presets run when named.

A ``label`` (``suite --label``) names a variant of the whole sweep (``--model block=deepnorm --label deepnorm``):
it is stored in every record and is part of the cell key, so the same cells with another label are measured
again, and the leaderboard shows one row per (architecture, label).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..mixers import MIXERS
from ..models.architecture import architecture_capabilities, base_mixer, is_architecture, meet
from ..models.config import ModelConfig
from ..tasks import TASKS
from ..train.config import TrainConfig
from .capacity import CapacityCell, capacity_key
from .machine import machine_info
from .recipes import model_for, recipe, sized_options
from .results import RETRIED, append_record, capacity_record, capacity_records, load_records
from .runner import run_module


#: ``TrainConfig`` fields a sweep sets through its own arguments, so ``train_overrides`` may not (the CLI flag).
TRAIN_FIELDS_WITH_FLAGS = {"lr": "--lrs", "max_time": "--budget", "max_steps": "--max-steps", "seed": "--seeds",
                           "eval_interval": "--eval-every", "threads": "--threads"}
#: Per-cell timeout (s) of a sweep with a step budget and no time budget.
STEP_ONLY_TIMEOUT_S = 4 * 3600.0


def causal_task(task: str) -> bool:
    """True for tasks trained causally (``lm``, ``sequence``, ``regression`` kinds)."""
    return TASKS.get(task).kind in ("lm", "sequence", "regression")


def default_mixers(task: str) -> list[str]:
    """Every registered mixer that can run the task: causal tasks need a causal mixer; classification tasks take
    every mixer (causal-only ones encode causally)."""
    if causal_task(task):
        return [m for m in MIXERS.names() if MIXERS.get(m).capabilities.causal]
    return list(MIXERS.names())


def build_cells(tasks: list[str], mixers: list[str] | None, seeds: list[int], *, budget_s: float | None,
                max_steps: int | None = None, lrs: list[float] | None = None,
                task_options: dict[str, dict[str, Any]] | None = None,
                model_overrides: dict[str, Any] | None = None, mixer_options: dict[str, dict[str, Any]] | None = None,
                eval_n: int | None = None, threads: int | None = None, timeout_s: float | None = None,
                max_memory_mib: float | None = None, label: str = "",
                eval_every: int | None = None, device: str = "cpu",
                train_overrides: dict[str, Any] | None = None) -> list[CapacityCell]:
    """The cells of a sweep (task-major, then mixer, then seed).

    Args:
        budget_s: training time per learning rate (s); max_steps: step cap per learning rate (either or both;
            neither = each recipe's ``steps``).
        lrs: the learning-rate grid (default: each recipe's).
        mixers: registered mixers and schedule presets (default: ``default_mixers``, the registered mixers).
        task_options / mixer_options: per task / per mixer option overrides (win over the recipe and the
            length-sized options); a preset takes those of its base mixer, then its own
            (``mixer_options["masformer"]``).
        eval_every: validate every this many steps, for learning curves (default: once, at the end).
        model_overrides: ``ModelConfig`` fields applied to every task's model (e.g. ``{"dim": 128}``,
            ``{"block": "deepnorm"}``, ``{"ffn": "moe", "ffn_options": {"num_experts": 4}}``); not ``mixer`` or
            ``mixer_options`` (those are ``mixers`` and ``mixer_options``).
        train_overrides: ``TrainConfig`` fields applied to every task's training on top of the recipe's (e.g.
            ``{"batch_size": 256}``); not the fields that have their own argument (``TRAIN_FIELDS_WITH_FLAGS``).
        timeout_s: per cell (default: 1.5 × the grid's time budget + 10 minutes for data and evaluation;
            ``STEP_ONLY_TIMEOUT_S`` when only ``max_steps`` is given).

        label: the variant's name, stored in every record and part of every cell's key (``""``: none).
        device: ``"cpu"`` or ``"cuda"`` (already resolved, ``grid.resolve_device``).

    Raises:
        ValueError: an unknown task, mixer, preset, model or training field; no budget (where a recipe has no
            ``steps``) or a non-positive one; a model override of ``mixer``/``mixer_options``; a training override
            of a field with its own argument; or a ``schedule`` override together with a preset.
    """
    if budget_s is None and max_steps is None:
        unbudgeted = [t for t in tasks if t in TASKS and recipe(t).steps is None]
        if unbudgeted:
            raise ValueError(f"budget: give a time budget (--budget) and/or --max-steps (the recipes of "
                             f"{', '.join(unbudgeted)} set no step budget)")
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget must be positive, got {budget_s}")
    model_overrides = dict(model_overrides or {})
    valid = ModelConfig.__dataclass_fields__
    unknown = sorted(set(model_overrides) - set(valid))
    if unknown:
        raise ValueError(f"model field(s) {unknown} unknown; valid fields: {sorted(valid)}")
    if {"mixer", "mixer_options"} & set(model_overrides):
        raise ValueError("model overrides may not set mixer or mixer_options: name architectures with mixers "
                         "(--mixers) and their options with mixer_options (--option MIXER.KEY=VALUE)")
    train_overrides = dict(train_overrides or {})
    unknown = sorted(set(train_overrides) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"training field(s) {unknown} unknown; valid fields: "
                         f"{sorted(set(TrainConfig.__dataclass_fields__) - set(TRAIN_FIELDS_WITH_FLAGS))}")
    flagged = {k: TRAIN_FIELDS_WITH_FLAGS[k] for k in train_overrides if k in TRAIN_FIELDS_WITH_FLAGS}
    if flagged:
        raise ValueError("training field(s) " + ", ".join(f"{k} (give {flag})" for k, flag in flagged.items())
                         + " have their own argument")
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {label!r}")
    cells = []
    for task in tasks:
        TASKS.get(task)
        rec = recipe(task)
        options = {**rec.task_options, **(task_options or {}).get(task, {})}
        instance = TASKS.create(task, **{k: v for k, v in options.items()}) if task != "lm" else None
        seq_len = instance.seq_len if instance is not None else options.get("block_size", 256)
        grid = tuple(lrs or rec.lrs)
        train = {**rec.train, **train_overrides}
        if budget_s is not None:  # the recipe's max_steps stays a cap
            train["max_time"] = budget_s
        if max_steps is not None:
            train["max_steps"] = max_steps
        elif budget_s is None:
            train["max_steps"] = rec.steps  # the recipe's own step budget
        if eval_every is not None:  # a learning curve: validation every eval_every steps (part of the cell key)
            if eval_every <= 0:
                raise ValueError(f"eval_every must be a positive number of steps, got {eval_every!r}")
            train["eval_interval"] = eval_every
        for mixer in mixers or default_mixers(task):
            if not is_architecture(mixer):
                MIXERS.get(mixer)  # raises, listing the registered mixers
            preset = mixer not in MIXERS
            if preset and "schedule" in model_overrides:
                raise ValueError(f"a schedule model override ({model_overrides['schedule']!r}) and the schedule "
                                 f"preset {mixer!r} both set the layers; give one of them")
            model = model_for(rec, mixer, seq_len, model_overrides)
            own = (mixer_options or {}).get(mixer, {})
            base = (mixer_options or {}).get(base_mixer(mixer), {}) if preset else {}
            m_opts = {**sized_options(mixer, seq_len, model.get("dim", 64)), **base, **own}
            # a time budget bounds a cell; a step budget alone does not, so its cells get STEP_ONLY_TIMEOUT_S
            per_cell = 1.5 * budget_s * len(grid) + 600.0 if budget_s is not None else STEP_ONLY_TIMEOUT_S
            for seed in seeds:
                cells.append(CapacityCell(task=task, task_options=options, mixer=mixer, mixer_options=m_opts,
                                          model=model, train=train, lrs=grid, seed=seed,
                                          eval_n=eval_n or rec.eval_n, threads=threads or _all_cores(),
                                          timeout_s=timeout_s or per_cell,
                                          max_memory_mib=max_memory_mib, label=label.strip(), device=device))
    return cells


def _all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def unsupported_reason(cell: CapacityCell) -> str | None:
    """Why an architecture cannot take a task, from its declared capabilities (no subprocess needed): the meet of
    the capabilities of its layers' mixers at the cell's depth (``architecture_capabilities`` when the model
    cannot be configured here; the subprocess then records why)."""
    layers = cell.layer_mixers()
    caps = meet(MIXERS.get(m).capabilities for m in dict.fromkeys(layers)) if layers \
        else architecture_capabilities(cell.mixer)
    if causal_task(cell.task) and not caps.causal:
        several = layers and len(set(layers)) > 1
        which = [m for m in dict.fromkeys(layers) if not MIXERS.get(m).capabilities.causal] if several else []
        return f"{cell.mixer} cannot be causal" + (f" (its {', '.join(which)} layers)" if which else "") + \
            f" and task {cell.task} is causal"
    return None


def run_capacity_cell(cell: CapacityCell, machine: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cell`` in a fresh subprocess and return its record; a failure is the record's status."""
    machine = machine or machine_info()
    reason = unsupported_reason(cell)
    if reason:
        return capacity_record(cell, machine, status="unsupported", reason=reason)
    outcome = run_module("lightformer.bench.capacity", cell.to_json(), threads=cell.threads,
                         timeout_s=cell.timeout_s)
    if outcome.record is not None:
        return outcome.record
    rec = capacity_record(cell, machine, status=outcome.status, reason=outcome.reason)
    rec["total_seconds"] = outcome.elapsed_s
    return rec


def run_suite(cells: list[CapacityCell], out_path: str | os.PathLike[str], *, force: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell not yet in ``out_path`` (unless ``force``; ``error`` records are retried), appending each
    record as soon as it is done. A tqdm bar shows the cell and the ETA. Returns the records of ``cells`` in
    order (stored ones for skipped cells)."""
    from tqdm import tqdm

    done = {} if force else {capacity_key(r): r for r in capacity_records(load_records(out_path))
                             if r.get("status") not in RETRIED}
    machine = machine_info()
    records = []
    bar = tqdm(cells, desc="suite", unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        name = f"{cell.mixer} [{cell.label}]" if cell.label else cell.mixer
        bar.set_postfix_str(f"{cell.task}/{name}/seed {cell.seed}", refresh=True)
        if cell.key in done:
            records.append(done[cell.key])
            continue
        rec = run_capacity_cell(cell, machine)
        append_record(out_path, rec)
        records.append(rec)
        if log is not None:
            shown = f"{rec['metric']} {rec['value']:.4f}" if rec.get("status") == "ok" else rec["status"]
            log(f"{cell.task} / {name} / seed {cell.seed}: {shown}"
                + (f" (lr {rec['lr']:g}, {rec['steps']} steps)" if rec.get("status") == "ok" else
                   f" ({(rec.get('reason') or '')[:200]})"))
    bar.close()
    return records

