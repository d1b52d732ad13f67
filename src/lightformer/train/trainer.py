"""The trainer: AdamW, warm-up + cosine schedule, gradient clipping, bf16 autocast on CPU, periodic evaluation,
a step and/or wall-clock budget, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..models.heads import LanguageModel
from ..tasks.text import Corpus
from . import checkpoint
from .config import RunConfig
from .optim import build_optimizer

LN2 = math.log(2.0)


@dataclass
class TrainResult:
    """What a run measured. Losses in nats per token; ``*_bpc`` in bits per token (per char or per byte,
    as the tokenizer says); ``seconds`` is training wall time including evaluations."""

    val_loss: float
    val_bpc: float
    train_loss: float
    steps: int
    tokens: int
    seconds: float
    tokenizer: str
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "history"}


def lr_at(cfg, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr`` over ``progress`` in [0, 1]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * p)) * (cfg.lr - cfg.min_lr)


class Trainer:
    """Train a ``LanguageModel`` on a ``Corpus`` as a ``RunConfig`` says.

    Args:
        config: model + training options; ``model.vocab_size`` is taken from the corpus tokenizer.
        corpus: the data (default: loaded from ``config.train.data``).
        log: where progress lines go (default ``print`` to stderr via tqdm.write).

    Raises:
        ValueError: ``block_size`` above ``model.max_len`` with absolute positions, or bad config values.
    """

    def __init__(self, config: RunConfig, corpus: Corpus | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        tc = config.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.corpus = corpus if corpus is not None else Corpus.load(tc.data, tokenizer=tc.tokenizer)
        model_cfg = dataclasses.replace(config.model, vocab_size=self.corpus.tokenizer.vocab_size)
        if model_cfg.position in ("learned", "sinusoidal") and tc.block_size > model_cfg.max_len:
            raise ValueError(f"block_size={tc.block_size} is above model.max_len={model_cfg.max_len}")
        self.config = RunConfig(model_cfg, tc)
        torch.manual_seed(tc.seed)
        self.model = LanguageModel(model_cfg)
        self.optimizer = build_optimizer(self.model, tc)
        self.generator = torch.Generator().manual_seed(tc.seed)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []
        self.log = log or tqdm.write

    # -- pieces ---------------------------------------------------------------------------------------------------
    def autocast(self):
        if self.config.train.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, split: str = "val", iters: int | None = None) -> float:
        """Mean next-token loss (nats) over ``iters`` batches drawn with a fixed seed, so every evaluation of a
        run (and of runs with the same data and seed) sees the same windows."""
        tc = self.config.train
        gen = torch.Generator().manual_seed(tc.seed + 1)
        was_training = self.model.training
        self.model.eval()
        losses = []
        for _ in range(iters or tc.eval_iters):
            x, y = self.corpus.batch(split, tc.batch_size, tc.block_size, gen)
            with self.autocast():
                _, loss = self.model(x, y)
            losses.append(loss.item())
        self.model.train(was_training)
        return sum(losses) / len(losses)

    def progress(self) -> float:
        tc = self.config.train
        fractions = []
        if tc.max_steps is not None:
            fractions.append(self.step / tc.max_steps)
        if tc.max_seconds is not None:
            fractions.append(self.elapsed / tc.max_seconds)
        return max(fractions)

    def trainer_state(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                "history": self.history, "tokenizer": self.corpus.tokenizer.to_json(), "data": self.corpus.name,
                "data_sha256": self.corpus.sha256}

    def save(self) -> str | None:
        out_dir = self.config.train.out_dir
        if out_dir is None:
            return None
        return str(checkpoint.save(out_dir, self.model, self.optimizer, self.trainer_state(), self.generator))

    def resume(self, path: str) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG, step, elapsed time and history."""
        state = checkpoint.restore(path, self.model, self.optimizer, self.generator)
        if state.get("data_sha256") != self.corpus.sha256:
            raise ValueError(f"resume={path!r}: the checkpoint was trained on other data ({state.get('data')})")
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.history = state["history"]

    # -- loop -----------------------------------------------------------------------------------------------------
    def fit(self, *, progress_bar: bool = True, until_step: int | None = None) -> TrainResult:
        """Train until the step/time budget is spent (or, if given, until ``until_step``, leaving the schedule as
        the full run's — as if the run were interrupted there), evaluate, checkpoint, and return the result."""
        tc = self.config.train
        self.model.train()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not progress_bar, unit="step", dynamic_ncols=True)
        train_loss = float("nan")
        last_val = None
        start = time.perf_counter() - self.elapsed
        while self.progress() < 1.0 and (until_step is None or self.step < until_step):
            lr = lr_at(tc, self.step, self.progress())
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self.corpus.batch("train", tc.batch_size, tc.block_size, self.generator)
            with self.autocast():
                _, loss = self.model(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip, foreach=True)
            self.optimizer.step()
            self.step += 1
            self.tokens += x.numel()
            train_loss = loss.item()
            self.elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{self.tokens / self.elapsed:,.0f}",
                            left=f"{self._time_left():.0f}s")
            if self.step % tc.eval_interval == 0:
                last_val = self._record(train_loss)  # evaluation time counts against the budget
            if tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0:
                self.save()
        bar.close()
        if last_val is None or self.history[-1]["step"] != self.step:
            last_val = self._record(train_loss)
        self.elapsed = time.perf_counter() - start
        path = self.save()
        return TrainResult(val_loss=last_val, val_bpc=last_val / LN2, train_loss=train_loss, steps=self.step,
                           tokens=self.tokens, seconds=self.elapsed, tokenizer=self.corpus.tokenizer.kind,
                           history=self.history, checkpoint=path)

    def _time_left(self) -> float:
        tc = self.config.train
        p = self.progress()
        return max(0.0, self.elapsed * (1 - p) / p) if p > 0 else float("nan")

    def _record(self, train_loss: float) -> float:
        val = self.evaluate("val")
        row = {"step": self.step, "tokens": self.tokens, "seconds": round(self.elapsed, 3),
               "train_loss": train_loss, "val_loss": val, "val_bpc": val / LN2}
        self.history.append(row)
        self.log(f"step {self.step}: train loss {train_loss:.4f}, val loss {val:.4f} nats "
                 f"({val / LN2:.4f} bits/{self.corpus.tokenizer.kind}), {self.elapsed:.1f}s")
        return val
