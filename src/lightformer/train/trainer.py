"""The trainer: one loop for every task kind (language modelling, probes, classification, two-tower retrieval,
in-context regression). The task builds the model head, yields the batches and computes the loss and metrics;
the trainer owns AdamW/Muon, the warm-up + cosine schedule, gradient clipping, bf16 autocast, gradient accumulation,
multi-process data parallelism (``DistributedDataParallel`` under torchrun, ``train/distributed.py``), periodic
evaluation, a step and/or wall-clock budget, atomic checkpoints and exact resume, on any device torch runs on."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blocks import collect_aux_loss, collect_aux_stats
from ..tasks.base import Loss, Task, batch_to, direction
from ..tasks.text import Corpus
from . import checkpoint
from .compiled import compile_for_training
from .config import RunConfig
from .distill import DistillLoss, distillation_loss, load_teacher
from .distributed import SINGLE, Distributed, resolve_device
from .evaluate import autocast_context, evaluate
from .optim import build_optimizer
from .precision import resolve_bf16

LN2 = math.log(2.0)
#: draw seeds of training batches: run seed s, micro-batch g -> s·STREAM + g (a stream per run seed, resumable by
#: step); with one process and no accumulation g is the step
STREAM = 2**32


@dataclass
class TrainResult:
    """What a run measured.

    Attributes:
        metrics: the task's metrics on its validation set at the end, keyed ``val_<metric>`` (``val_bpc`` in bits
            per token, ``val_loss`` in nats per scored unit, ``val_accuracy`` in [0, 1], ...).
        train_loss: the last training batch's loss.
        steps: optimizer steps; tokens: input tokens processed; scored: scored units trained on (tokens whose
            target is not ignored, or examples), both summed over micro-batches and ranks; seconds: training wall
            time including evaluations (rank 0's), so ``tokens / seconds`` is the run's throughput in tokens/s.
        task: the task's registry name; tokenizer: ``"byte" | "char"`` for ``lm``, else ``None``.
        diverged_at: the step whose training loss was NaN or infinite, where the run stopped; ``None`` if none was.
        teacher: the distillation teacher (``train.teacher``): its resolved checkpoint ``path``, run ``config`` and
            ``step``; ``None`` without one. ``train_loss`` stays the task's (hard-label) loss either way.
        world_size: processes that trained (torchrun ranks); grad_accum: micro-batches per step on each.
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
    world_size: int = 1
    grad_accum: int = 1

    @property
    def tokens_per_s(self) -> float:
        """Throughput of the whole run in input tokens per second, summed over the ranks (evaluations included,
        as in ``seconds``)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")

    @property
    def val_bpc(self) -> float | None:
        return self.metrics.get("val_bpc")

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("history", "metrics")}
        return {**self.metrics, **out, "tokens_per_s": self.tokens_per_s}


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
        log: where progress lines go (default ``tqdm.write``); only rank 0 logs.
        device: ``"cpu" | "cuda" | "auto"`` or a ``torch.device`` (default: ``dist.device``, CPU without ``dist``).
        dist: this process's place in a torchrun launch (``distributed.init()``); default one process.

    Batches: micro-batch ``a`` of optimizer step ``s`` on rank ``r`` of ``W`` with ``A = grad_accum`` is
    ``task.sample("train", batch_size, seed=seed·2³² + g)`` with ``g = (s·A + a)·W + r``: a fresh draw from the
    run seed's own stream, disjoint between ranks, so a resumed run sees the batches the whole run would have, one
    process with ``A = 1`` draws ``g = s`` (the batches of every run before accumulation existed), and ``W`` ranks
    with ``A = 1`` draw exactly the micro-batches of one process with ``A = W``. Evaluation uses the task's
    canonical validation set (``eval_iters · batch_size`` examples), the same for every run and seed, split
    between the ranks.

    The loss of an optimizer step is the sum over the scored units of all its micro-batches on all ranks divided
    by their number (counted with ``task.count`` and all-reduced before the backward), so ``W`` ranks of ``b``
    examples train as one process with ``W`` accumulation steps of ``b``, whatever each micro-batch scores. Under
    ``DistributedDataParallel`` (which averages gradients over the ranks) each rank's micro-batch loss is scaled by
    ``W · count / global count``; accumulation micro-steps run under ``no_sync`` except the last. Rank 0 writes the
    checkpoints while the others wait; all ranks resume from them.

    With ``train.teacher`` the student minimises Hinton et al.'s (2015) mix of the teacher's softened targets and
    the task's loss (``train/distill.py``), the teacher run on each training batch in eval mode without gradient;
    the history logs both terms (``train_distill_loss``, ``train_hard_loss``). Evaluation is the task's own.

    Raises:
        ValueError: bad config values, a task whose length exceeds ``model.max_len`` with absolute positions, or a
            teacher that cannot teach this task's model (message names ``teacher``).
        FileNotFoundError: no checkpoint at ``train.teacher``.
    """

    def __init__(self, config: RunConfig, corpus: Corpus | None = None, *, task: Task | None = None,
                 log: Callable[[str], None] | None = None, device: str | torch.device | None = None,
                 dist: Distributed | None = None) -> None:
        tc = config.train
        self.dist = dist or SINGLE
        self.device = self.dist.device if device is None else resolve_device(device, self.dist.local_rank)
        if dist is not None and self.device != dist.device:
            raise ValueError(f"device={str(self.device)!r} differs from the device of this rank, {dist.device}")
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.task = task if task is not None else config.build_task(**({"corpus": corpus} if corpus else {}))
        model_cfg = self.task.model_config(config.model)
        self.config = RunConfig(model_cfg, tc, config.task)
        torch.manual_seed(tc.seed)
        self.model = self.task.build_model(model_cfg).to(self.device)
        # train.compile: the training forward runs compiled; evaluation, checkpoints and the optimizer keep the
        # plain module, whose parameters the compiled wrapper shares
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (plain model, its compiled wrapper)
        if tc.compile:  # at construction, so a mixer that cannot compile is refused before anything runs
            self._compiled = (self.model, compile_for_training(self.model, model_cfg))
        self.optimizer = build_optimizer(self.model, tc)
        # not a submodule of the student: outside its optimizer, its parameters and its checkpoint
        self.teacher = None if tc.teacher is None else load_teacher(tc.teacher, self.task, self.model,
                                                                     device=self.device)
        if self.dist.rank > 0:  # a dropout stream per rank (rank 0 keeps the single-process stream)
            torch.manual_seed(rank_seed(tc.seed, self.dist.rank))
        # the forward every rank runs through DDP's hooks; the plain model stays what is evaluated and saved
        self._ddp = self.dist.wrap(TaskLoss(self._forward_model, self.task)) if self.dist.parallel else None
        self.step = 0
        self.tokens = 0
        self.scored = 0
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []
        self._aux: dict[str, float] = {}
        self.log = (log or tqdm.write) if self.dist.is_main else _silent

    @property
    def _forward_model(self) -> nn.Module:
        """The module the training forward runs through: ``model`` itself, or with ``train.compile`` its compiled
        wrapper. It follows ``model`` when a caller swaps it after construction (``compress``'s fine-tune trains
        the compressed model in a trainer built for the run's config); with several ranks the DDP wrapper built
        at construction does not."""
        if not self.config.train.compile:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, compile_for_training(self.model, self.config.model))
        return self._compiled[1]

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
        """The task's metrics on the canonical ``split`` set of ``iters`` (default ``eval_iters``) batches (split
        between the ranks; every rank must call this)."""
        tc = self.config.train
        return evaluate(self.model, self.task, split, n=(iters or tc.eval_iters) * tc.batch_size,
                        batch_size=tc.batch_size, bf16=self.bf16, device=self.device, dist=self.dist)

    def micro_batch_index(self, step: int, micro: int = 0) -> int:
        """The global index ``g = (step·A + micro)·W + rank`` of this rank's micro-batch ``micro`` of ``step``."""
        return (step * self.config.train.grad_accum + micro) * self.dist.world_size + self.dist.rank

    def draw(self, step: int, micro: int = 0) -> tuple:
        """This rank's micro-batch ``micro`` of optimizer step ``step``, on the CPU (as the task makes it)."""
        tc = self.config.train
        return self.task.sample("train", tc.batch_size, seed=tc.seed * STREAM + self.micro_batch_index(step, micro))

    def train_batch(self, step: int, micro: int = 0) -> tuple:
        """``draw(step, micro)`` on the training device."""
        return batch_to(self.draw(step, micro), self.device)

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
                 "task_options": self.task.options(), "world_size": self.dist.world_size}
        if self.task.kind == "lm":
            state.update(tokenizer=self.corpus.tokenizer.to_json(), data=self.corpus.name,
                         data_sha256=self.corpus.sha256)
        if self.teacher is not None:
            state["teacher"] = self.teacher.record
        return state

    def save(self) -> str | None:
        """Write the checkpoint (rank 0; every rank must call this: their RNG states are gathered into it, and they
        wait at a barrier until it is written). Returns its folder, or ``None`` without ``out_dir``."""
        out_dir = self.config.train.out_dir
        if out_dir is None:
            return None
        rngs = self.dist.all_gather(checkpoint.rng_state(self.device))
        if self.dist.is_main:
            state = self.trainer_state()
            state["rng"] = dict(rngs[0], ranks=rngs) if self.dist.parallel else rngs[0]
            checkpoint.save(out_dir, self.model, self.optimizer, state)
        self.dist.barrier()
        return str(pathlib.Path(out_dir) / checkpoint.NAME)

    def resume(self, path: str) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG, step, elapsed time and history.

        Every rank reads the same checkpoint. Its optimizer step took ``G = grad_accum · world_size`` micro-batches;
        a run with another world size ``W`` keeps that global batch (and so the step count, the schedule and the
        batches each step draws) by training with ``grad_accum = G / W``, logged when it changes. Dropout streams:
        each rank continues its own when ``W`` is the checkpoint's; otherwise rank 0 continues rank 0's and the
        others start fresh streams (so with dropout a resumed run equals the uninterrupted one only at the same
        ``W``).

        Raises:
            ValueError: the checkpoint was trained on another task or other data, or ``W`` does not divide its
                ``G`` (names ``grad_accum``)."""
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
        self._keep_global_batch(path, state)
        checkpoint.restore(path, self.model, self.optimizer, self.device)
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.scored = state.get("scored", self.tokens)
        self.history = state["history"]
        ranks = state["rng"].get("ranks")
        if ranks is not None and len(ranks) == self.dist.world_size:
            checkpoint.set_rng_state(ranks[self.dist.rank], self.device)
        elif self.dist.rank > 0:  # no saved stream for this rank: a fresh one, distinct per resume step
            torch.manual_seed(rank_seed(self.config.train.seed, self.dist.rank) + self.step)

    def _keep_global_batch(self, path: str, state: dict[str, Any]) -> None:
        """Set ``grad_accum`` so that an optimizer step takes the checkpoint's number of micro-batches."""
        tc = self.config.train
        saved_accum, saved_world = state["config"]["train"].get("grad_accum", 1), state.get("world_size", 1)
        try:
            accum = resumed_grad_accum(saved_accum, saved_world, self.dist.world_size)
        except ValueError as e:
            raise ValueError(f"resume={path!r}: {e}") from None
        if accum != tc.grad_accum:
            self.log(f"resume: {self.dist.world_size} process(es), the checkpoint {saved_world}: grad_accum "
                     f"{tc.grad_accum} -> {accum} keeps its {saved_accum * saved_world} micro-batches of "
                     f"{tc.batch_size} per optimizer step")
            self.config = dataclasses.replace(self.config, train=dataclasses.replace(tc, grad_accum=accum))

    # -- loop -----------------------------------------------------------------------------------------------------
    def fit(self, *, progress_bar: bool = True, until_step: int | None = None) -> TrainResult:
        """Train until the step/time budget is spent (or, if given, until ``until_step``, leaving the schedule as
        the full run's — as if the run were interrupted there), evaluate, checkpoint, and return the result.

        A training loss that is NaN or infinite stops the run at that step (its weights are no longer numbers, so
        the rest of the budget would train nothing): the result's ``diverged_at`` names the step and the history's
        last row holds the non-finite loss; no checkpoint is written over the last finite one."""
        tc = self.config.train
        self.model.train()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not (progress_bar and self.dist.is_main),
                   unit="step", dynamic_ncols=True)
        train_loss = float("nan")
        last: dict[str, float] | None = None
        diverged_at = None
        start = time.perf_counter() - self.elapsed
        # every rank takes the same decisions (stop, evaluate, save) from the same all-reduced numbers
        while self.progress() < 1.0 and (until_step is None or self.step < until_step):
            lr = lr_at(tc, self.step, self.progress())
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            train_loss, finite_objective = self._train_step(start)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{self.tokens / self.elapsed:,.0f}",
                            left=f"{self._time_left():.0f}s")
            if not math.isfinite(train_loss) or not finite_objective:
                diverged_at = self.step
                why = "" if finite_objective or not math.isfinite(train_loss) else \
                    " (finite, but not the objective with its distillation/auxiliary terms)"
                self.log(f"step {self.step}: training loss {train_loss}{why}: diverged, stopping")
                break
            if self.step % tc.eval_interval == 0:
                last = self._record(train_loss)  # evaluation time counts against the budget
                if self._reached(last):
                    break
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
                           teacher=None if self.teacher is None else self.teacher.record,
                           world_size=self.dist.world_size, grad_accum=tc.grad_accum)

    def _reached(self, metrics: dict[str, float]) -> bool:
        """Whether the primary validation metric has reached ``stop_at`` (logged when it has)."""
        target, name = self.config.train.stop_at, self.task.primary_metric
        if target is None:
            return False
        value = metrics[name]
        done = value >= target if direction(name) == "max" else value <= target
        if done:
            self.log(f"step {self.step}: val {name} {value:.4f} reached stop_at={target}, stopping")
        return done

    def _train_step(self, start: float) -> tuple[float, bool]:
        """One optimizer step over this rank's ``grad_accum`` micro-batches; updates ``step``, ``tokens``,
        ``scored`` and ``elapsed`` (rank 0's clock, so every rank sees the same progress). Returns the step's mean
        training loss over all its scored units (all ranks), and whether every micro-batch's objective was
        finite (on every rank)."""
        tc = self.config.train
        accum, world = tc.grad_accum, self.dist.world_size
        batches = [self.draw(self.step, a) for a in range(accum)]
        counts = [self.task.count(b) for b in batches]  # from the CPU batches: no device sync
        local = [sum(counts), sum(input_tokens(b) for b in batches)]
        # the global count must be known before the first backward: it divides every micro-batch's loss
        scored, tokens = self.dist.all_sum(torch.tensor(local, device=self.device)).tolist() \
            if self.dist.parallel else local
        self.optimizer.zero_grad(set_to_none=True)
        # float64: one process without accumulation reads back exactly float(loss) (loss * count / count)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        nonfinite = torch.zeros((), dtype=torch.float64, device=self.device)
        for a, (batch, count) in enumerate(zip(batches, counts)):
            batch = batch_to(batch, self.device)
            # all-reduce the gradients once per optimizer step, in the last micro-step's backward
            sync = self._ddp is None or a == accum - 1
            with (contextlib.nullcontext() if sync else self._ddp.no_sync()):
                with self.autocast():
                    out = self._task_loss(batch, count)
                    aux = collect_aux_loss(self.model)  # e.g. MoE load balancing, set by the forward just run
                    distilled = None if self.teacher is None else self._distill(out, batch)
                objective = out.loss if distilled is None else distilled.loss
                # mean over this micro-batch -> its share of the global mean; DDP then divides by the world size
                scale = count * world / scored
                if scale != 1.0:
                    objective = objective * scale
                if aux is not None:
                    objective = objective + (aux / accum if accum > 1 else aux)
                objective.backward()
            self._accumulate_aux(aux, distilled)
            loss_sum += out.loss.detach().double() * count
            nonfinite += (~torch.isfinite(objective.detach())).double()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip, foreach=True)
        self.optimizer.step()
        self.step += 1
        self.tokens += tokens
        self.scored += scored
        clock = time.perf_counter() - start if self.dist.is_main else 0.0
        stats = self.dist.all_sum(torch.stack([loss_sum, nonfinite, torch.tensor(clock, dtype=torch.float64,
                                                                                   device=self.device)]))
        loss_sum, nonfinite, self.elapsed = stats.tolist()
        return loss_sum / scored, nonfinite == 0

    def _task_loss(self, batch: tuple, count: int) -> Loss:
        """``task.loss`` of one training micro-batch, through DDP's forward when there are several ranks."""
        if self._ddp is None:
            return self.task.loss(self._forward_model, batch)
        out = self._ddp(batch)
        return Loss(out["loss"], count, {}, out["logits"], out["targets"])

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
        """Evaluate (every rank takes its share), append a history row and log it (rank 0). The auxiliary and
        distillation terms are rank 0's."""
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


class TaskLoss(nn.Module):
    """``task.loss(model, batch)`` as a module, so ``DistributedDataParallel`` wraps the whole training forward
    (a task may reach into the model's parts, e.g. ``model.head(model.backbone(x))``, which a DDP wrapper does not
    expose and whose gradients it would not all-reduce). Returns ``{"loss", "logits", "targets"}`` (see ``Loss``).
    """

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: tuple) -> dict[str, torch.Tensor | None]:
        out = self.task.loss(self.model, batch)
        return {"loss": out.loss, "logits": out.logits, "targets": out.targets}


def resumed_grad_accum(saved_accum: int, saved_world: int, world: int) -> int:
    """The ``grad_accum`` with which ``world`` processes keep the global batch of a checkpoint written by
    ``saved_world`` processes with ``saved_accum``: ``saved_accum · saved_world / world`` micro-batches each, so an
    optimizer step draws the same micro-batches ``g`` (``Trainer.micro_batch_index``) and the step count, the
    schedule and the loss's normalisation keep their meaning.

    Raises:
        ValueError: ``world`` does not divide ``saved_accum · saved_world`` (names ``grad_accum``)."""
    total = saved_accum * saved_world
    if total % world:
        raise ValueError(f"an optimizer step of the checkpoint takes {total} micro-batches (grad_accum={saved_accum} "
                         f"x {saved_world} process(es)); {world} processes cannot share them with one grad_accum: "
                         f"launch a number of processes that divides {total}")
    return total // world


def rank_seed(seed: int, rank: int) -> int:
    """torch's seed of rank ``rank``'s dropout stream (rank 0 uses the run seed's own stream)."""
    return seed + rank * STREAM


def _silent(line: str) -> None:
    """The log of ranks other than 0."""
