"""Induction head: the synthetic task of Fu, Dao et al. 2023, "Hungry Hungry Hippos: Towards Language Modeling with
State Space Models" (ICLR 2023, arXiv 2212.14052), Sec. 3.1, after the induction heads of Olsson et al. 2022;
generator reimplemented from the description of H3's code (HazyResearch/safari ``src/dataloaders/synthetics.py``,
``generate_induction_head``), settings from ``configs/pipeline/induction_head.yaml`` and
``configs/dataset/icl_synthetics.yaml``.

The task. A random sequence of ordinary tokens; once, somewhere in it, the special token ``=>`` appears, followed by
some token; at the end ``=>`` appears again and the model must output the token that followed its first
occurrence (``a b => f c … d =>`` -> ``f``). Scored at evaluation: only the final position.

- Layout (``T = seq_len``): ``T - 1`` ordinary tokens (uniform, with replacement) with ``=>`` written over the
  one at position ``p``, ``p`` uniform in ``[0, T - 3)`` (H3: ``rng.integers(input_seq_len - 2)``, so the copied
  token is never the last ordinary one), then ``=>`` at ``T - 1``; the target there is the token at ``p + 1``.
- Vocabulary (``V = vocab_size``, counted as H3 counts it, its two special tokens included): ordinary ``t0 …
  t{V-3}``, ``=>`` (the trigger, ``V-2``) and H3's no-op ``.`` (``V-1``), which this task never emits (it is
  H3's associative-recall filler; kept so the output layer and chance level, 1/20, match H3's).
- Training targets: ``train_targets="all"`` (H3) scores the next token at every training position (H3 trains its
  synthetics as language models and masks all but the last target only at test); ``"probe"`` scores only the
  final position.
- Not reproduced: H3 drops duplicate examples (at 18^30 possible prefixes a duplicate is vanishingly rare) and has
  an option for several triggers and longer copied spans (``induction_len``, ``induction_num_triggers``), both 1
  in its experiments.

Defaults = H3's settings: V = 20 (18 ordinary tokens) and ``input_seq_len`` 30 random tokens plus the final
trigger, so T = 31 inputs (H3's ``l_max`` 32 counts the answer); 5,000 training examples (H3's test set is 500).
H3 trains 2-layer models of width 32 (``d_inner`` 4·32, embedding dropout 0.1; attention: 1 head, dropout 0.1)
for 400 epochs, batch 32, AdamW lr 5e-4, weight decay 0.1, cosine with warm-up. Published (H3 Table 1; recalled
from the paper, [UNVERIFIED] against its text): induction head accuracy (%) — random 5.0, S4D 35.6,
H3 100.0, attention 100.0. The example options (T = 16) are CPU-sized: a 2-layer width-32 attention model learns
them in minutes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .base import IGNORE, TASKS, TaskConfig, check_int
from ._probe import TRAIN_TARGETS, ProbeTask, check_choice


@dataclass(frozen=True)
class InductionConfig(TaskConfig):
    """Attributes:
        vocab_size: V, all tokens (V - 2 ordinary, the trigger ``=>`` and the unused no-op ``.``), >= 4.
        seq_len: T, the length of the inputs (T - 1 random tokens, then the trigger), >= 4.
        num_train_examples: size of the fixed training pool (H3: 5,000); 0 = a fresh draw for every training batch.
        train_targets: ``"all"`` (every next token, H3) or ``"probe"`` (the final position only).
    """

    vocab_size: int = 20
    seq_len: int = 31
    num_train_examples: int = 5_000
    train_targets: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", "seq_len", low=4)
        check_int(self, "num_train_examples", low=0)
        check_choice(self, "train_targets", TRAIN_TARGETS)


@TASKS.register("induction")
class Induction(ProbeTask):
    """H3's induction-head task (see the module docstring).

    ``sample(split, n)`` -> ``(inputs [n, T] int64, targets [n, T] int64)``: ``targets[i, T-1]`` is the token that
    followed the first ``=>`` of row i; every other target ``IGNORE`` (with ``train_targets="all"``, the training
    split's targets are the next token everywhere).

    Raises:
        ValueError: from the config, a bad option value.
    """

    config_class = InductionConfig
    example_options = {"seq_len": 16, "num_train_examples": 64}

    @property
    def trigger(self) -> int:
        return self.config.vocab_size - 2

    @functools.cached_property
    def vocab(self) -> tuple[str, ...]:
        return tuple(f"t{i}" for i in range(self.config.vocab_size - 2)) + ("=>", ".")

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        T = self.config.seq_len
        rows = np.arange(n)
        full = np.empty((n, T + 1), dtype=np.int64)
        full[:, :T - 1] = rng.integers(0, self.trigger, size=(n, T - 1))
        where = rng.integers(0, T - 3, size=n)  # the first trigger; the token after it is at most T-3
        full[rows, where] = self.trigger
        full[:, T - 1] = self.trigger
        full[:, T] = full[rows, where + 1]
        inputs = full[:, :T]
        if split == "train" and self.config.train_targets == "all":
            return inputs, full[:, 1:].copy()
        targets = np.full((n, T), IGNORE, dtype=np.int64)
        targets[:, T - 1] = full[:, T]
        return inputs, targets
