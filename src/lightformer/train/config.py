"""Run configuration: ``TrainConfig`` + ``ModelConfig``, named presets, TOML files and dotted overrides.

Precedence: preset < TOML file < ``--section.key=value`` overrides. Values in overrides are parsed as TOML
literals (``64``, ``true``, ``3e-4``, ``"text"``), falling back to a bare string.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ..models.config import ModelConfig
from .optim import OPTIMIZERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_duration(value: str | float | int | None) -> float | None:
    """``"90s" | "10m" | "1.5h" | 600`` -> seconds (float); ``None`` stays ``None``. ValueError otherwise."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(value))
    if not m:
        raise ValueError(f"max_time must look like 90s, 10m or 1.5h, got {value!r}")
    scale = {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


#: defaults of ``TrainConfig.distill_temperature`` / ``distill_alpha`` (why: see its docstring)
DISTILL_TEMPERATURE, DISTILL_ALPHA = 2.0, 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data options.

    Attributes:
        data: ``"stdlib"`` (built-in corpus) or a file path; tokenizer: ``"byte" | "char"``.
        batch_size, block_size: examples (sequences) per micro-batch and tokens per sequence (context length).
        grad_accum: micro-batches per optimizer step on each rank (gradient accumulation). One optimizer step sees
            ``batch_size · grad_accum · world_size`` examples (world size = processes under torchrun, else 1); its
            loss is the mean over all their scored units. Resuming with another world size keeps this global batch
            by changing ``grad_accum`` (``Trainer.resume``).
        max_steps: optimizer steps; max_time: wall-clock budget (``"10m"``); training stops at whichever comes
            first, and the cosine schedule follows whichever is further along (progress = max of both fractions).
        optimizer: ``"adamw"``, or ``"muon"`` (Muon on the blocks' weight matrices, AdamW on the rest; see
            ``train/optim.py``).
        lr, min_lr, warmup_steps, weight_decay, beta1, beta2, grad_clip: AdamW with linear warm-up then cosine
            decay to ``min_lr``; gradient norm clipped to ``grad_clip`` (0 = off).
        bf16: bf16 autocast (weights and optimizer stay fp32): ``True``, ``False``, or ``"auto"`` = bf16 where the
            device multiplies bf16 natively (AMX / AVX-512 BF16 CPUs, CUDA), else fp32 (``train/precision.py``).
        eval_interval, eval_iters: evaluate every N steps on ``eval_iters`` fixed validation batches.
        checkpoint_interval: write a checkpoint every N steps (0 = only at the end) when ``out_dir`` is set.
        seed: seeds the model init, the batch sampler and dropout.
        out_dir: where checkpoints go (``None`` = no checkpoints).
        threads: torch intra-op threads (0 = torch default).
        teacher: a trained checkpoint (out_dir or checkpoint folder) of the same task, vocabulary and head to distil
            from (``train/distill.py``; Hinton, Vinyals & Dean 2015), or ``None``. Its mixers may differ.
        distill_temperature: T > 0 of the softened distributions. 2.0 by default: Hinton et al. tried T in
            {1, 2, 5, 10} on their speech model (Sec. 4) and found intermediate T best for small students on MNIST
            (2.5 to 4 at 30 units per layer, Sec. 3); a char/byte LM's next-token distribution is already far from
            one-hot (~1.5 nats), so a high T would flatten it towards uniform.
        distill_alpha: weight α in [0, 1] of the soft term: loss = α·T²·KL + (1 − α)·CE (0 = plain training).
            0.5 by default, the equal mix of the paper's speech experiment (a weight of 0.5 on the hard targets).
        compile: run the training forward and backward through ``torch.compile`` (``train/compiled.py``; refused
            for a mixer whose ``capabilities.compile`` says why it cannot); evaluation and checkpoints stay eager.
        stop_at: stop once the task's primary validation metric reaches this value (``>=`` for a metric where
            higher is better, such as accuracy; ``<=`` for one where lower is better, such as bpc), checked at each
            evaluation (every ``eval_interval`` steps); ``None`` = train the whole budget. Zoology (Arora et al.
            2023) stops its MQAR runs at 0.99 accuracy.
    """

    data: str = "stdlib"
    tokenizer: str = "byte"
    batch_size: int = 16
    block_size: int = 128
    grad_accum: int = 1
    max_steps: int | None = 1000
    max_time: str | float | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    bf16: bool | str = False
    eval_interval: int = 250
    eval_iters: int = 20
    checkpoint_interval: int = 0
    seed: int = 1337
    out_dir: str | None = None
    threads: int = 0
    teacher: str | None = None
    distill_temperature: float = DISTILL_TEMPERATURE
    distill_alpha: float = DISTILL_ALPHA
    compile: bool = False
    stop_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "block_size", "grad_accum", "eval_interval", "eval_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be {' or '.join(map(repr, OPTIMIZERS))}, got {self.optimizer!r}")
        if self.max_steps is None and self.max_time is None:
            raise ValueError("set max_steps or max_time (or both)")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_time is not None and parse_duration(self.max_time) <= 0:
            raise ValueError(f"max_time must be positive, got {self.max_time!r}")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):
            raise ValueError(f"bf16 must be true, false or 'auto', got {self.bf16!r}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.checkpoint_interval < 0 or self.threads < 0:
            raise ValueError("warmup_steps, grad_clip, checkpoint_interval and threads must be >= 0")
        if self.stop_at is not None and (isinstance(self.stop_at, bool) or not isinstance(self.stop_at, (int, float))
                                         or not math.isfinite(self.stop_at)):
            raise ValueError(f"stop_at must be a finite number or unset, got {self.stop_at!r}")
        self._check_distillation()

    def _check_distillation(self) -> None:
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            raise ValueError(f"teacher must be a checkpoint directory or unset, got {self.teacher!r}")
        t, a = self.distill_temperature, self.distill_alpha
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise ValueError(f"distill_temperature must be a finite number > 0, got {t!r}")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1:
            raise ValueError(f"distill_alpha must be a number in [0, 1], got {a!r}")
        if self.teacher is None and (t, a) != (DISTILL_TEMPERATURE, DISTILL_ALPHA):
            raise ValueError(f"distill_temperature={t!r} / distill_alpha={a!r} are set but teacher is not: there "
                             "is nothing to distil from")

    @property
    def max_seconds(self) -> float | None:
        return parse_duration(self.max_time)


@dataclass(frozen=True)
class TaskSpec:
    """Which registered task a run trains on (``lightformer tasks``) and its options.

    The default task ``lm`` takes ``data``, ``tokenizer`` and ``block_size`` from ``TrainConfig`` unless its
    options set them, so LM presets, flags and old checkpoints keep their meaning.
    """

    name: str = "lm"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..tasks import TASKS

        if self.name not in TASKS:
            TASKS.get(self.name)  # raises ValueError listing the registered tasks


@dataclass(frozen=True)
class RunConfig:
    """A whole training run: the model, the training options and the task."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskSpec = field(default_factory=TaskSpec)

    SECTIONS = ("model", "train", "task")

    def to_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                "task": dataclasses.asdict(self.task)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        unknown = sorted(set(data) - set(cls.SECTIONS))
        if unknown:
            raise TypeError(f"unknown config section(s) {unknown}; valid sections: {', '.join(cls.SECTIONS)}")
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        bad = sorted(set(data.get("train", {})) - train_fields)
        if bad:
            raise TypeError(f"unknown train option(s) {bad}; valid options: {sorted(train_fields)}")
        task = dict(data.get("task", {}))
        bad = sorted(set(task) - {"name", "options"})
        if bad:
            raise TypeError(f"unknown task field(s) {bad}; valid fields: name, options")
        return cls(ModelConfig.from_dict(data.get("model", {})), TrainConfig(**data.get("train", {})),
                   TaskSpec(**task))

    def build_task(self, **kwargs: Any):
        """The ``Task`` this run trains on (``lm`` gets data/tokenizer/block_size from the train section).

        ``kwargs`` go to the lm task's constructor (``corpus=``, ``tokenizer=``) and are ignored by others."""
        from ..tasks import TASKS, create_task

        options = dict(self.task.options)
        if self.task.name == "lm":
            tc = self.train
            for key, value in (("data", tc.data), ("tokenizer", tc.tokenizer), ("block_size", tc.block_size)):
                options.setdefault(key, value)
            return TASKS.get("lm")(TASKS.make_config("lm", **options), **kwargs)
        return create_task(self.task.name, **options)


#: Named presets (override any field with flags). Figures quoted are measured on the project's 2-core machines.
PRESETS: dict[str, dict[str, Any]] = {
    # a few minutes on the built-in stdlib corpus: the default of `lightformer train`
    "stdlib-small": {
        "model": {"dim": 128, "num_layers": 4, "num_heads": 4, "max_len": 128, "position": "learned"},
        "train": {"data": "stdlib", "tokenizer": "byte", "batch_size": 16, "block_size": 128, "max_steps": 600,
                  "max_time": "3m", "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 50, "bf16": "auto",
                  "eval_interval": 200, "eval_iters": 20},
    },
    # nanoGPT's CPU Shakespeare config, for reference (4 layers, 128 dim, context 64, batch 12, 2000 iterations)
    "nanogpt-cpu": {
        "model": {"dim": 128, "num_layers": 4, "num_heads": 4, "max_len": 64, "dropout": 0.0},
        "train": {"data": "../shared/data/tinyshakespeare.txt", "tokenizer": "char", "batch_size": 12,
                  "block_size": 64, "max_steps": 2000, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
                  "eval_interval": 250, "eval_iters": 200},
    },
    # the 10-minute char-level Shakespeare run (target <= 1.55 nats/char; nanoGPT's 4-layer 256-dim anchor reaches
    # 1.6472 in ~10 minutes): Muon on the block matrices reaches in 500 steps what AdamW did in ~1500. Measured
    # 1.5051 nats/char after 1865 steps in 9m34s on 2 cores (docs/results/shakespeare_char_train.txt; AdamW, lr 2e-3:
    # 1.5889 after 2059 steps)
    "shakespeare-char": {
        "model": {"dim": 256, "num_layers": 4, "num_heads": 4, "max_len": 128, "dropout": 0.0,
                  "ffn": "gelu", "position": "learned", "mixer": "tiled_softmax"},
        "train": {"data": "../shared/data/tinyshakespeare.txt", "tokenizer": "char", "batch_size": 16,
                  "block_size": 128, "max_steps": None, "max_time": "9.5m", "optimizer": "muon", "lr": 6e-3,
                  "min_lr": 6e-4, "warmup_steps": 100, "bf16": "auto", "eval_interval": 250, "eval_iters": 50},
    },
    # seconds: for tests and smoke runs
    "tiny": {
        "model": {"dim": 32, "num_layers": 2, "num_heads": 2, "max_len": 32},
        "train": {"batch_size": 8, "block_size": 32, "max_steps": 20, "lr": 3e-3, "warmup_steps": 5,
                  "eval_interval": 10, "eval_iters": 2},
    },
}


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML literal, or keep it as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "model.mixer_options.window", 64)``: nested assignment creating tables as needed."""
    keys = dotted.split(".")
    if len(keys) < 2 or keys[0] not in RunConfig.SECTIONS or not all(keys):
        raise ValueError(f"override {dotted!r} must look like model.<key>=..., train.<key>=... or task.<key>=...")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a table")
    node[keys[-1]] = value


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge into a new tree (neither argument is modified)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else copy.deepcopy(value)
    return out


def build_run_config(preset: str | None = None, toml_path: str | None = None,
                     overrides: list[tuple[str, Any]] | None = None) -> RunConfig:
    """Preset, then TOML file, then ``(dotted_key, value)`` overrides -> validated ``RunConfig``."""
    tree: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        tree = merge(tree, PRESETS[preset])
    if toml_path is not None:
        with open(toml_path, "rb") as f:
            tree = merge(tree, tomllib.load(f))
    for key, value in overrides or []:
        set_dotted(tree, key, value)
    return RunConfig.from_dict(tree)
