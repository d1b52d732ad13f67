"""Shared machinery of the generated capability probes (MAD's six tasks, H3's induction head).

- ``ProbeTask``: a ``SequenceTask`` whose training split can be a *finite* pool, as in the papers (MAD trains on
  12,800 fixed examples for 200 epochs, H3 on 5,000 for 400 epochs): ``sample("train", n, seed=k)`` then draws
  ``n`` rows of that pool, ``seed=None`` gives its first ``n`` rows (cycling). ``num_train_examples = 0`` makes
  every training draw fresh instead. Validation and test are always fresh draws from their own streams.
- ``draw_distinct``: random ordered motifs of distinct tokens (MAD's motifs are ``itertools.permutations``).
- ``first_occurrence``: per row, where each id first appeared (the key -> value binding of a recall sequence).

This module is private (``tasks/__init__`` skips names starting with ``_``); the task modules import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SPLITS, SequenceTask, TaskConfig

#: ``train_targets`` of the recall-style probes: ``"all"`` = the next token at every position (how MAD and H3
#: train: their training targets are the shifted inputs), ``"probe"`` = only the positions scored at evaluation.
TRAIN_TARGETS = ("all", "probe")


def check_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` when its value is not one of ``choices``."""
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_fraction(cfg: Any, name: str, *, high_inclusive: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is a real number in ``[0, 1)`` (``[0, 1]`` if inclusive)."""
    v = getattr(cfg, name)
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v and (v <= 1.0 if high_inclusive
                                                                                 else v < 1.0)
    if not ok:
        raise ValueError(f"{name} must be a number in [0, 1{']' if high_inclusive else ')'}, got {v!r}")


def task_stream(config: TaskConfig, purpose: int) -> np.random.Generator:
    """A generator fixed by the task seed alone, for objects shared by every split (memorization's key -> value
    map). Its entropy ``[seed, len(SPLITS), purpose + 1]`` never equals a split stream of ``Task.rng``."""
    return np.random.default_rng([config.seed, len(SPLITS), purpose + 1])


def draw_distinct(rng: np.random.Generator, size: tuple[int, ...], population: int, k: int) -> np.ndarray:
    """``[*size, k]`` int64: per cell, ``k`` distinct tokens of ``[0, population)`` in random order (a uniformly
    random ordered k-permutation: token ``j`` is uniform over the ``population - j`` tokens not yet chosen).

    Raises:
        ValueError: ``k > population``.
    """
    if k > population:
        raise ValueError(f"cannot draw {k} distinct tokens from {population}")
    out = np.zeros((*size, k), dtype=np.int64)
    for j in range(k):
        t = rng.integers(0, population - j, size=size)
        chosen = np.sort(out[..., :j], axis=-1)
        for i in range(j):  # the t-th unused token: step over each chosen one at or below it, smallest first
            t = t + (t >= chosen[..., i])
        out[..., j] = t
    return out


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """``ids [n, m]`` int64 -> ``[n, m]`` int64: for each cell ``(r, i)`` the smallest ``j`` with
    ``ids[r, j] == ids[r, i]`` (so ``j == i`` marks a first occurrence, ``j < i`` a repeat)."""
    n, m = ids.shape
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids stay in slot order: the first comes first
    ranked = np.take_along_axis(ids, order, axis=1)
    new = np.ones((n, m), dtype=bool)
    new[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    group_start = np.maximum.accumulate(np.where(new, np.arange(m), 0), axis=1)
    first_ranked = np.take_along_axis(order, group_start, axis=1)
    first = np.empty_like(order)
    np.put_along_axis(first, order, first_ranked, axis=1)
    return first


class ProbeTask(SequenceTask):
    """A generated next-token probe with an optional finite training pool (``config.num_train_examples``).

    Subclasses implement ``_generate(rng, n, split) -> (inputs [n, T], targets [n, T])`` (numpy int64, ``IGNORE``
    at unscored positions), drawing every random number from ``rng``.
    """

    def __init__(self, config: TaskConfig) -> None:
        super().__init__(config)
        self._pool: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def seq_len(self) -> int:
        return self.config.seq_len  # type: ignore[attr-defined]

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def train_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed training set ``(inputs [N, T], targets [N, T])`` numpy int64, ``N = num_train_examples``,
        drawn once from the training split's canonical stream and cached.

        Raises:
            ValueError: ``num_train_examples == 0`` (no fixed pool: every training draw is fresh).
        """
        size = self.config.num_train_examples  # type: ignore[attr-defined]
        if size == 0:
            raise ValueError("num_train_examples=0: this task has no fixed training pool")
        if self._pool is None:
            self._pool = self._generate(self.rng("train", None), size, "train")
        return self._pool

    def _sample(self, split: str, n: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train" and self.config.num_train_examples > 0:  # type: ignore[attr-defined]
            inputs, targets = self.train_pool()
            size = len(inputs)
            if seed is None:
                idx = np.arange(n) % size
            else:
                idx = self.rng(split, seed).choice(size, size=n, replace=n > size)
            inputs, targets = inputs[idx], targets[idx]
        else:
            inputs, targets = self._generate(self.rng(split, seed), n, split)
        return torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)), \
            torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))


__all__ = ["ProbeTask", "TRAIN_TARGETS", "check_choice", "check_fraction", "draw_distinct", "first_occurrence",
           "task_stream"]
