"""Multi-query associative recall (MQAR): Arora, Eyuboglu et al. 2023, "Zoology: Measuring and Improving Recall in
Efficient Language Models" (arXiv 2312.04927), Sec. 3 and Appendix D.

A sequence of length T starts with K key-value pairs ``k1 v1 k2 v2 … kK vK``: keys drawn without replacement from
``[1, V/2)``, values (with replacement) from ``[V/2, V)``. The remaining ``T - 2K`` positions are the query region,
filled with token 0 (``random_non_queries=True``: random tokens of ``[1, V)`` instead, Zoology's option). Every key
is queried exactly once, at an even offset ``2·s`` of the query region, the slots ``s`` drawn without replacement
with power-law weights ``p(s) ∝ a·(s+1)^(a-1)`` (``power_a = a = 0.01``: most queries close to the context, a long
tail far from it). After the next-token shift, the target at a query position is the value bound to that key;
every other position is ``IGNORE`` (-100). Metric: accuracy over the K query positions.

Zoology requires ``T`` even and ``4K <= T``; its Figure 2 uses V = 8192 with (T, K) in {(64, 4), (128, 8),
(256, 16), (512, 64)} (2 layers, d_model 64-512, 100k training examples, up to 64 epochs, best of 4 learning rates).
There attention reaches ~1.0 at every T for every width, while gated convolutions need a width that grows with T
(at T=512, d=512: BaseConv ≈ 0.7, RWKV ≈ 0.37, Hyena ≈ 0.18, H3 ≈ 0.1). Select Figure 2's settings with
``vocab_size=8192, seq_len=T, num_kv_pairs=K``.

Default (CPU-sized): V = 64, T = 64, K = 4: Figure 2's first (T, K) point with a vocabulary a width-64 model sees
often enough to learn within minutes of CPU training (31 possible keys, so a model cannot guess the pairs: chance
is 1/32 per query, and "one of the K values in context" is 1/K). Training draws fresh examples every step
(``sample("train", n, seed=step)``) rather than Zoology's fixed 100k, the CPU analogue of many epochs; the recipe
(batch 256, learning rates, steps) is in ``bench/recipes.py`` and its measurements in ``docs/capacity.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import IGNORE, TASKS, SequenceTask, TaskConfig, check_int


@dataclass(frozen=True)
class MQARConfig(TaskConfig):
    """Attributes:
        vocab_size: V (keys from [1, V/2), values from [V/2, V); token 0 is the filler).
        seq_len: T, even.
        num_kv_pairs: K, with 4·K <= T and K < V/2.
        power_a: the power-law exponent a of the query gaps, in (0, 1].
        random_non_queries: fill the query region with random tokens instead of 0.
    """

    vocab_size: int = 64
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", low=4)
        check_int(self, "seq_len", "num_kv_pairs")
        if self.seq_len % 2:
            raise ValueError(f"seq_len must be even (queries sit at even offsets), got {self.seq_len}")
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(f"num_kv_pairs={self.num_kv_pairs}: 4·K must be <= seq_len={self.seq_len}")
        if self.num_kv_pairs >= self.vocab_size // 2:
            raise ValueError(f"num_kv_pairs={self.num_kv_pairs} needs more distinct keys than [1, V/2) has "
                             f"(vocab_size={self.vocab_size})")
        if isinstance(self.power_a, bool) or not isinstance(self.power_a, (int, float)) or not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a!r}")
        if not isinstance(self.random_non_queries, bool):
            raise ValueError(f"random_non_queries must be a bool, got {self.random_non_queries!r}")


def _choose_without_replacement(rng: np.random.Generator, n: int, population: int, k: int,
                                log_weights: np.ndarray | None = None) -> np.ndarray:
    """``[n, k]`` distinct indices in ``[0, population)`` per row, drawn with probabilities ∝ exp(log_weights)
    (uniform when None) by the Gumbel-top-k trick (equivalent to sequential sampling without replacement)."""
    scores = rng.gumbel(size=(n, population))
    if log_weights is not None:
        scores += log_weights
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


@TASKS.register("mqar")
class MQAR(SequenceTask):
    """Zoology's multi-query associative recall; see the module docstring. ``sample`` returns
    ``(inputs [n, T] int64, targets [n, T] int64)``, targets = the value at each of the K query positions."""

    config_class = MQARConfig
    example_options = {"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 4}

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def vocab(self) -> tuple[str, ...]:
        half = self.config.vocab_size // 2
        return ("_",) + tuple(f"k{i}" for i in range(1, half)) + tuple(f"v{i - half}" for i in
                                                                       range(half, self.config.vocab_size))

    def _sample(self, split: str, n: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        rng = self.rng(split, seed)
        T, K, V = c.seq_len, c.num_kv_pairs, c.vocab_size
        half = V // 2
        keys = 1 + _choose_without_replacement(rng, n, half - 1, K)  # [n, K] distinct per row
        values = rng.integers(half, V, size=(n, K))  # [n, K]
        context = 2 * K
        slots = (T - context) // 2
        log_p = (c.power_a - 1.0) * np.log(np.arange(1, slots + 1, dtype=np.float64))
        gaps = _choose_without_replacement(rng, n, slots, K, log_p)  # [n, K] query slots
        if c.random_non_queries:
            inputs = rng.integers(1, V, size=(n, T))
        else:
            inputs = np.zeros((n, T), dtype=np.int64)
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        positions = context + 2 * gaps  # [n, K] where each key is asked
        rows = np.arange(n)[:, None]
        inputs[rows, positions] = keys
        targets = np.full((n, T), IGNORE, dtype=np.int64)
        targets[rows, positions] = values  # the position holding the query predicts its value
        return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets)
