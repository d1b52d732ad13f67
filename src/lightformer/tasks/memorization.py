"""Memorization: one of the six MAD probes of Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures" (ICML 2024, arXiv 2403.17844); generator reimplemented from the description of mad-lab's
``generate_kv_map`` and ``generate_memorization_instance`` (``mad/data/instances.py``), baseline from
``configs/tasks/memorization.yml``.

The task. One fixed key -> value map, the same for every sequence and every split (fixed by the task seed; MAD
fixes it with seed 12345): the facts the model must store in its weights. A sequence is ``T/2`` lookups
``k insert``; the target at each insert token is the value of the key before it (nothing in the context tells it:
values never appear in the inputs). Keys are uniform (with replacement) over the keys of the map.

- Memorization is tested on the training facts: the training split is a fixed pool of ``num_train_examples``
  sequences (MAD: 256), and validation and test ask the *same* map — fresh combinations of the keys that the
  training pool contains (so a perfect memoriser scores 1.0). At the baseline (V = 256: 127 keys, 256 × 16 = 4,096
  lookups) every key is in the pool (a key is missing with probability ≈ e^-32), as in MAD; at MAD's largest
  vocabularies MAD's test set also asks keys its training set never showed (≈ 37% of the 4,095 keys at V = 8192,
  a ceiling no model can pass), which ours does not. ``num_train_examples=0`` trains on fresh draws instead and
  evaluation asks every key.
- The map (MAD's layout, ``V = vocab_size``): insert token ``V-1``; keys ``[0, (V-1)//2)`` (``k0 …``), values
  ``[(V-1)//2, V-1)`` (``v0 …``); each key gets a distinct value (MAD zips a shuffled key list with a shuffled
  value list), so with V - 1 odd one value is unused.
- Targets are the same on every split (MAD has no training-only targets for this task).

Defaults = MAD's baseline: V = 256, T = 32, 256 training examples (MAD's test set is 1,280). MAD's only "change":
``vocab_size`` {512, 1024, 2048, 4096, 8192} (more facts per parameter). MAD's protocol: width 128, batch 128,
200 epochs, AdamW with lr {1e-4, 5e-4, 1e-3} × weight decay {0, 0.1}, cosine to 1e-6, best run counts; a model's
MAD score is its mean accuracy over all settings of all six tasks. Published: only that mean, read off mad-lab's
``assets/mad_to_scale.png`` (Hyena+SwiGLU ≈ 0.66, MH-Hyena ≈ 0.73, Striped Hyena+SwiGLU ≈ 0.77, Striped
Hyena-Experts+MoE ≈ 0.78); per the notes, memorization is the one task whose accuracy does *not* track lower Pile
perplexity across those five, and MoE channel mixers help it [UNVERIFIED].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .base import IGNORE, TASKS, TaskConfig, check_int
from ._probe import ProbeTask, task_stream


@dataclass(frozen=True)
class MemorizationConfig(TaskConfig):
    """Attributes:
        vocab_size: V, all tokens (keys, values and the insert token), >= 3.
        seq_len: T, the length of the inputs, even (``T/2`` lookups ``key insert``).
        num_train_examples: size of the fixed training pool (MAD: 256); 0 = a fresh draw for every training batch.
    """

    vocab_size: int = 256
    seq_len: int = 32
    num_train_examples: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", low=3)
        check_int(self, "seq_len", low=2)
        check_int(self, "num_train_examples", low=0)
        if self.seq_len % 2:
            raise ValueError(f"seq_len must be even (the inputs are `key insert` lookups), got {self.seq_len}")


@TASKS.register("memorization")
class Memorization(ProbeTask):
    """MAD's memorization probe (see the module docstring).

    ``sample(split, n)`` -> ``(inputs [n, T] int64, targets [n, T] int64)``: keys at even positions, the insert
    token at odd ones; ``targets[i, 2j+1] = kv_map[inputs[i, 2j]]``, every even target ``IGNORE``.

    Raises:
        ValueError: from the config: a bad option value or an odd ``seq_len``.
    """

    config_class = MemorizationConfig
    example_options = {"vocab_size": 64, "seq_len": 16, "num_train_examples": 32}

    @property
    def num_keys(self) -> int:
        return (self.config.vocab_size - 1) // 2

    @property
    def insert(self) -> int:
        return self.config.vocab_size - 1

    @functools.cached_property
    def vocab(self) -> tuple[str, ...]:
        nk = self.num_keys
        return tuple(f"k{i}" for i in range(nk)) + tuple(f"v{i}" for i in range(self.insert - nk)) + ("insert",)

    @functools.cached_property
    def kv_map(self) -> np.ndarray:
        """``[num_keys]`` int64: the value token of each key token (distinct values), fixed by the task seed."""
        nk = self.num_keys
        return nk + task_stream(self.config, purpose=0).permutation(self.insert - nk)[:nk]

    @functools.cached_property
    def asked_keys(self) -> np.ndarray:
        """The keys validation and test ask: those the training pool shows (all keys without a pool), sorted."""
        if self.config.num_train_examples == 0:
            return np.arange(self.num_keys)
        return np.unique(self.train_pool()[0][:, 0::2])

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        T = self.config.seq_len
        if split == "train":
            keys = rng.integers(0, self.num_keys, size=(n, T // 2))
        else:
            asked = self.asked_keys
            keys = asked[rng.integers(0, len(asked), size=(n, T // 2))]
        inputs = np.full((n, T), self.insert, dtype=np.int64)
        inputs[:, 0::2] = keys
        targets = np.full((n, T), IGNORE, dtype=np.int64)
        targets[:, 1::2] = self.kv_map[keys]
        return inputs, targets
