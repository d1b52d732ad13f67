"""The trainer: one loop for every task kind (language modelling, probes, classification, two-tower retrieval,
in-context regression). The task builds the model head, yields the batches and computes the loss and metrics;
the trainer owns AdamW/Muon, the warm-up + cosine schedule, gradient clipping, bf16 autocast, periodic evaluation,
a step and/or wall-clock budget, atomic checkpoints and exact resume."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..blocks import collect_aux_loss, collect_aux_stats
from ..tasks.base import Loss, Task, batch_to
from ..tasks.text import Corpus
from . import checkpoint
from .compiled import compile_for_training
from .config import RunConfig
from .distill import DistillLoss, distillation_loss, load_teacher
from .evaluate import autocast_context, evaluate
from .optim import build_optimizer
from .precision import resolve_bf16

LN2 = math.log(2.0)
#: draw seeds of training batches: run seed s, step t -> s·STREAM + t (a stream per run seed, resumable by step)
STREAM = 2**32


@dataclass
class TrainResult:
    """What a run measured.

    Attributes:
        metrics: the task's metrics on its validation set at the end, keyed ``val_<metric>`` (``val_bpc`` in bits
            per token, ``val_loss`` in nats per scored unit, ``val_accuracy`` in [0, 1], ...).
        train_loss: the last training batch's loss.
        steps: optimizer steps; tokens: input tokens processed; scored: scored units trained on (tokens whose
            target is not ignored, or examples); seconds: training wall time including evaluations.
        task: the task's registry name; tokenizer: ``"byte" | "char"`` for ``lm``, else ``None``.
        diverged_at: the step whose training loss was NaN or infinite, where the run stopped; ``None`` if none was.
        teacher: the distillation teacher (``train.teacher``): its resolved checkpoint ``path``, run ``config`` and
            ``step``; ``None`` without one. ``train_loss`` stays the task's (hard-label) loss either way.
    """

    metrics: dict[str, float]
    train_loss: float
    steps: int
    tokens: int
    scored: int
    seconds: float
    task: str = "lm"
    tokenizer: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None
    diverged_at: int | None = None
    teacher: dict[str, Any] | None = None

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")

    @property
    def val_bpc(self) -> float | None:
        return self.metrics.get("val_bpc")

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("history", "metrics")}
        return {**self.metrics, **out}


def input_tokens(batch: tuple) -> int:
    """Token positions fed to the model by one batch (both towers of a pair batch)."""
    first = batch[0]
    if isinstance(first, tuple):  # pair: ((a, mask_a), (b, mask_b), labels)
        return first[0].numel() + batch[1][0].numel()
    return first.shape[0] * first.shape[1]


def lr_at(cfg, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr`` over ``progress`` in [0, 1]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * p)) * (cfg.lr - cfg.min_lr)


class Trainer:
    """Train the model a task builds, as a ``RunConfig`` says.

    Args:
        config: model + training options + task; the model's vocabulary comes from the task.
        corpus: for the ``lm`` task, an already loaded corpus (default: loaded from ``config.train.data``).
        task: the task instance (default: ``config.build_task()``).
        log: where progress lines go (default ``tqdm.write``).

    Training batches are ``task.sample("train", batch_size, seed=seed·2³² + step)``: a fresh draw per step from
    the run seed's own stream, so a resumed run sees the batches the whole run would have. Evaluation uses the
    task's canonical validation set (``eval_iters · batch_size`` examples), the same for every run and seed.

    With ``train.teacher`` the student minimises Hinton et al.'s (2015) mix of the teacher's softened targets and
    the task's loss (``train/distill.py``), the teacher run on each training batch in eval mode without gradient;
    the history logs both terms (``train_distill_loss``, ``train_hard_loss``). Evaluation is the task's own.

    Raises:
        ValueError: bad config values, a task whose length exceeds ``model.max_len`` with absolute positions, or a
            teacher that cannot teach this task's model (message names ``teacher``).
        FileNotFoundError: no checkpoint at ``train.teacher``.
    """

    def __init__(self, config: RunConfig, corpus: Corpus | None = None, *, task: Task | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        tc = config.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.task = task if task is not None else config.build_task(**({"corpus": corpus} if corpus else {}))
        model_cfg = self.task.model_config(config.model)
        self.config = RunConfig(model_cfg, tc, config.task)
        torch.manual_seed(tc.seed)
        self.model = self.task.build_model(model_cfg)
        # train.compile: the training forward runs compiled; evaluation, checkpoints and the optimizer keep the
        # plain module, whose parameters the compiled wrapper shares
        self._forward_model = compile_for_training(self.model, model_cfg) if tc.compile else self.model
        self.optimizer = build_optimizer(self.model, tc)
        self.device = torch.device("cpu")
        # not a submodule of the student: outside its optimizer, its parameters and its checkpoint
        self.teacher = None if tc.teacher is None else load_teacher(tc.teacher, self.task, self.model,
                                                                     device=self.device)
        self.step = 0
        self.tokens = 0
        self.scored = 0
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []
        self._aux: dict[str, float] = {}
        self.log = log or tqdm.write

    @property
    def bf16(self) -> bool:
        """Whether this run autocasts to bf16 (``TrainConfig.bf16`` with ``"auto"`` resolved for the device)."""
        return resolve_bf16(self.config.train.bf16, self.device)

    @property
    def corpus(self) -> Corpus:
        """The ``lm`` task's corpus (AttributeError for other tasks)."""
        return self.task.corpus  # type: ignore[attr-defined]

    # -- pieces ---------------------------------------------------------------------------------------------------
    def autocast(self):
        return autocast_context(self.device, self.bf16)

    def evaluate(self, split: str = "val", iters: int | None = None) -> dict[str, float]:
        """The task's metrics on the canonical ``split`` set of ``iters`` (default ``eval_iters``) batches."""
        tc = self.config.train
        return evaluate(self.model, self.task, split, n=(iters or tc.eval_iters) * tc.batch_size,
                        batch_size=tc.batch_size, bf16=self.bf16, device=self.device)

    def train_batch(self, step: int) -> tuple:
        return batch_to(self.task.sample("train", self.config.train.batch_size,
                                         seed=self.config.train.seed * STREAM + step), self.device)

    def progress(self) -> float:
        tc = self.config.train
        fractions = []
        if tc.max_steps is not None:
            fractions.append(self.step / tc.max_steps)
        if tc.max_seconds is not None:
            fractions.append(self.elapsed / tc.max_seconds)
        return max(fractions)

    def trainer_state(self) -> dict[str, Any]:
        state = {"config": self.config.to_dict(), "step": self.step, "tokens": self.tokens, "scored": self.scored,
                 "elapsed": self.elapsed, "history": self.history, "task": self.task.name,
                 "task_options": self.task.options()}
        if self.task.kind == "lm":
            state.update(tokenizer=self.corpus.tokenizer.to_json(), data=self.corpus.name,
                         data_sha256=self.corpus.sha256)
        if self.teacher is not None:
            state["teacher"] = self.teacher.record
        return state

    def save(self) -> str | None:
        out_dir = self.config.train.out_dir
        if out_dir is None:
            return None
        return str(checkpoint.save(out_dir, self.model, self.optimizer, self.trainer_state()))

    def resume(self, path: str) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG, step, elapsed time and history.

        Raises:
            ValueError: the checkpoint was trained on another task or other data."""
        state = checkpoint.read_state(path)
        if state.get("task", "lm") != self.task.name or \
                (self.task.kind != "lm" and state.get("task_options") != self.task.options()):
            raise ValueError(f"resume={path!r}: the checkpoint was trained on task {state.get('task', 'lm')!r} "
                             f"{state.get('task_options', '')}, not {self.task.describe()}")
        if self.task.kind == "lm" and state.get("data_sha256") != self.corpus.sha256:
            raise ValueError(f"resume={path!r}: the checkpoint was trained on other data ({state.get('data')})")
        was, now = (state.get("teacher") or {}).get("path"), self.teacher and self.teacher.record["path"]
        if was != now:
            raise ValueError(f"resume={path!r}: the checkpoint was distilled from teacher={was!r}, this run from "
                             f"teacher={now!r}")
        checkpoint.restore(path, self.model, self.optimizer)
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.scored = state.get("scored", self.tokens)
        self.history = state["history"]

    # -- loop -----------------------------------------------------------------------------------------------------
    def fit(self, *, progress_bar: bool = True, until_step: int | None = None) -> TrainResult:
        """Train until the step/time budget is spent (or, if given, until ``until_step``, leaving the schedule as
        the full run's — as if the run were interrupted there), evaluate, checkpoint, and return the result.

        A training loss that is NaN or infinite stops the run at that step (its weights are no longer numbers, so
        the rest of the budget would train nothing): the result's ``diverged_at`` names the step and the history's
        last row holds the non-finite loss; no checkpoint is written over the last finite one."""
        tc = self.config.train
        self.model.train()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not progress_bar, unit="step", dynamic_ncols=True)
        train_loss = float("nan")
        last: dict[str, float] | None = None
        diverged_at = None
        start = time.perf_counter() - self.elapsed
        while self.progress() < 1.0 and (until_step is None or self.step < until_step):
            lr = lr_at(tc, self.step, self.progress())
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = self.train_batch(self.step)
            with self.autocast():
                out = self.task.loss(self._forward_model, batch)
                aux = collect_aux_loss(self.model)  # e.g. MoE load balancing, set by the forward just run
                distilled = None if self.teacher is None else self._distill(out, batch)
            objective = out.loss if distilled is None else distilled.loss
            self.optimizer.zero_grad(set_to_none=True)
            (objective if aux is None else objective + aux).backward()
            self._accumulate_aux(aux, distilled)
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip, foreach=True)
            self.optimizer.step()
            self.step += 1
            self.tokens += input_tokens(batch)
            self.scored += out.count
            train_loss = float(out.loss.detach())
            self.elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{self.tokens / self.elapsed:,.0f}",
                            left=f"{self._time_left():.0f}s")
            if not math.isfinite(train_loss) or not math.isfinite(float(objective.detach())):
                diverged_at = self.step
                self.log(f"step {self.step}: training loss {train_loss} (objective {float(objective)}): diverged, "
                         "stopping")
                break
            if self.step % tc.eval_interval == 0:
                last = self._record(train_loss)  # evaluation time counts against the budget
            if tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0:
                self.save()
        bar.close()
        if last is None or self.history[-1]["step"] != self.step:
            last = self._record(train_loss)
        self.elapsed = time.perf_counter() - start
        path = self.save() if diverged_at is None else None  # keep the last finite checkpoint
        metrics = {f"val_{k}": v for k, v in last.items() if k != "count"}
        return TrainResult(metrics=metrics, train_loss=train_loss, steps=self.step, tokens=self.tokens,
                           scored=self.scored, seconds=self.elapsed, task=self.task.name,
                           tokenizer=self.corpus.tokenizer.kind if self.task.kind == "lm" else None,
                           history=self.history, checkpoint=path, diverged_at=diverged_at,
                           teacher=None if self.teacher is None else self.teacher.record)

    def _time_left(self) -> float:
        p = self.progress()
        return max(0.0, self.elapsed * (1 - p) / p) if p > 0 else float("nan")

    def _distill(self, out: Loss, batch: tuple) -> DistillLoss:
        """The distillation objective of this batch: the teacher's logits on the same batch (eval mode, no
        gradient) against the student's ``out.logits``, mixed with the task's own loss ``out.loss``."""
        tc = self.config.train
        with torch.no_grad():
            teacher_logits = self.task.loss(self.teacher.model, batch).logits
        return distillation_loss(out.logits, teacher_logits, out.targets, temperature=tc.distill_temperature,
                                 alpha=tc.distill_alpha, hard=out.loss)

    def _accumulate_aux(self, aux: torch.Tensor | None, distilled: DistillLoss | None = None) -> None:
        """Sum the auxiliary loss, the distillation terms and the blocks' statistics (e.g. ``moe_dropped`` tokens)
        since the last record."""
        stats = collect_aux_stats(self.model)
        if aux is not None:
            stats["aux_loss"] = float(aux.detach())
        if distilled is not None:
            stats["distill_loss"] = float(distilled.soft.detach())
            stats["hard_loss"] = float(distilled.hard.detach())
        if stats:
            stats["aux_steps"] = 1.0
        for key, value in stats.items():
            self._aux[key] = self._aux.get(key, 0.0) + value

    def _record(self, train_loss: float) -> dict[str, float]:
        metrics = self.evaluate("val")
        aux, self._aux = self._aux, {}
        steps = aux.pop("aux_steps", 0.0)
        for key in ("aux_loss", "distill_loss", "hard_loss"):
            if key in aux:
                aux[key] /= steps  # mean per step; counts (dropped tokens) stay totals over the interval
        row = {"step": self.step, "tokens": self.tokens, "seconds": round(self.elapsed, 3), "train_loss": train_loss,
               **{f"train_{k}": v for k, v in aux.items()},
               **{f"val_{k}": v for k, v in metrics.items() if k != "count"}}
        self.history.append(row)
        shown = ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items() if k != "count")
        self.log(f"step {self.step}: train loss {train_loss:.4f}, {shown}, {self.elapsed:.1f}s")
        return metrics
