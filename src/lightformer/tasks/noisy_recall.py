"""Noisy in-context recall: one of the six MAD probes of Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures" (ICML 2024, arXiv 2403.17844); generator reimplemented from the description of mad-lab's
``generate_noisy_in_context_recall_instance`` (its in-context recall generator with noise, ``mad/data/
instances.py``), baseline from ``configs/tasks/noisy-in-context-recall.yml``.

The task. A sequence is a run of two-token motifs: each is, with probability ``frac_noise``, two noise tokens
(uniform, with replacement, from a separate noise vocabulary), else a key-value pair ``k v`` (key uniform over the
key tokens; a key keeps its value within a sequence, a new key's value is uniform over the value tokens). At least
one motif is a pair. The sequence ends with a probe: a key drawn uniformly from the distinct keys it has shown,
followed by its value. Scored: the value of every repeated key and of the probe, at the key's position (the
position that predicts the value) — MAD's multi-query setting, which its benchmark uses. The noise carries no
information; the model must learn to ignore it.

- Vocabulary (``V = vocab_size``, ``N = noise_vocab_size``; MAD's multi-query layout): keys ``[0, (V-N)//2)``
  (``k0 …``), values ``[(V-N)//2, V-N)`` (``v0 …``), noise ``[V-N, V)`` (``noise0 …``). Baseline V = 32 with
  N = 16: 8 keys, 8 values, 16 noise tokens; MAD's vocabulary changes keep N = 16.
- Layout: MAD's sequence of ``seq_len`` tokens (``seq_len/2 - 1`` motifs, then the probe pair) preceded by one
  noise token, so that the inputs are exactly ``seq_len`` tokens and the targets the next ``seq_len`` (MAD feeds
  its model ``seq_len - 1`` tokens: it shifts its ``seq_len``-token sequence by one). ``seq_len`` must be even.
- Training targets: ``train_targets="all"`` (MAD) scores the next token at every training position, noise and
  random keys included (MAD trains its recall tasks as plain language models); ``"probe"`` scores only what
  evaluation scores.
- Differences from MAD's generator: MAD forces one of its ``seq_len/2`` motif indices to be a pair, but only
  ``seq_len/2 - 1`` motifs precede the probe, so rarely none is (and its probe draw fails); ours forces one of the
  motifs that exist. Values are drawn per key up front (the same distribution as MAD's draw at first sight).
  Sampling is vectorised.

Defaults = MAD's baseline: V = 32 (16 noise), T = 128, ``frac_noise`` = 0.2, 12,800 training examples (MAD's test
set is 1,280). MAD's "changes", one at a time: ``vocab_size`` {48, 80, 144} ("adding 16 for noise vocab");
``seq_len`` {256, 512, 1024}; ``num_train_examples`` {6400, 3200, 1600, 800}; ``frac_noise`` {0.4, 0.6, 0.8}.
MAD's protocol: width 128, batch 128, 200 epochs, AdamW with lr {1e-4, 5e-4, 1e-3} × weight decay {0, 0.1},
cosine to 1e-6, best run counts; a model's MAD score is its mean accuracy over all settings of all six tasks.
Published: only that mean, read off mad-lab's ``assets/mad_to_scale.png`` (Hyena+SwiGLU ≈ 0.66, MH-Hyena ≈ 0.73,
Striped Hyena+SwiGLU ≈ 0.77, Striped Hyena-Experts+MoE ≈ 0.78); noisy recall's own numbers are in the paper's
figures, not in our notes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .base import IGNORE, TASKS, TaskConfig, check_int
from ._probe import TRAIN_TARGETS, ProbeTask, check_choice, check_fraction, first_occurrence


@dataclass(frozen=True)
class NoisyRecallConfig(TaskConfig):
    """Attributes:
        vocab_size: V, all tokens (keys, values and noise).
        noise_vocab_size: N, the noise tokens, ``1 <= N <= V - 2``.
        seq_len: T, the length of the inputs, even, >= 4.
        frac_noise: probability that a motif is noise, in [0, 1).
        num_train_examples: size of the fixed training pool; 0 = a fresh draw for every training batch.
        train_targets: ``"all"`` (every next token, MAD) or ``"probe"`` (the evaluated positions only).
    """

    vocab_size: int = 32
    noise_vocab_size: int = 16
    seq_len: int = 128
    frac_noise: float = 0.2
    num_train_examples: int = 12_800
    train_targets: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", low=3)
        check_int(self, "noise_vocab_size")
        check_int(self, "seq_len", low=4)
        check_int(self, "num_train_examples", low=0)
        check_fraction(self, "frac_noise")
        check_choice(self, "train_targets", TRAIN_TARGETS)
        if self.vocab_size - self.noise_vocab_size < 2:
            raise ValueError(f"noise_vocab_size={self.noise_vocab_size} leaves fewer than 2 of vocab_size="
                             f"{self.vocab_size} tokens for keys and values")
        if self.seq_len % 2:
            raise ValueError(f"seq_len must be even (the sequence is two-token motifs), got {self.seq_len}")


@TASKS.register("noisy_recall")
class NoisyRecall(ProbeTask):
    """MAD's noisy in-context recall (see the module docstring).

    ``sample(split, n)`` -> ``(inputs [n, T] int64, targets [n, T] int64)``: ``targets[i, t]`` is the value that
    follows the key at position ``t`` when that key was seen before (and for the final probe key), else
    ``IGNORE``; with ``train_targets="all"`` the training split's targets are the next token everywhere.

    Raises:
        ValueError: from the config: a bad option value, an odd ``seq_len``, or a noise vocabulary that leaves
            fewer than two key/value tokens.
    """

    config_class = NoisyRecallConfig
    example_options = {"seq_len": 32, "num_train_examples": 64}

    @property
    def num_keys(self) -> int:
        return (self.config.vocab_size - self.config.noise_vocab_size) // 2

    @property
    def num_values(self) -> int:
        return self.config.vocab_size - self.config.noise_vocab_size - self.num_keys

    @functools.cached_property
    def vocab(self) -> tuple[str, ...]:
        return (tuple(f"k{i}" for i in range(self.num_keys)) + tuple(f"v{i}" for i in range(self.num_values))
                + tuple(f"noise{i}" for i in range(self.config.noise_vocab_size)))

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        T, nk = c.seq_len, self.num_keys
        first_noise = c.vocab_size - c.noise_vocab_size
        m = T // 2 - 1  # motifs before the probe pair
        rows = np.arange(n)
        noise = rng.random((n, m)) < c.frac_noise
        noise[rows, rng.integers(0, m, size=n)] = False  # at least one key-value pair
        keys = rng.integers(0, nk, size=(n, m))
        table = rng.integers(nk, nk + self.num_values, size=(n, nk))  # each key's value in this sequence
        noise_tok = rng.integers(first_noise, c.vocab_size, size=(n, m, 2))
        values = table[rows[:, None], keys]
        # noise motifs get ids no key has, so they never count as a key's first or repeated occurrence
        ids = np.where(noise, nk + np.arange(m), keys)
        first = first_occurrence(ids)
        repeat = (first != np.arange(m)) & ~noise
        # the probe: uniform over the distinct keys shown = over the slots holding a key's first occurrence
        score = np.where(~repeat & ~noise, rng.random((n, m)), -1.0)
        probe_key = keys[rows, score.argmax(1)]

        full = np.empty((n, T + 1), dtype=np.int64)
        full[:, 0] = rng.integers(first_noise, c.vocab_size, size=n)  # the one opening noise token
        full[:, 1:T - 1:2] = np.where(noise, noise_tok[..., 0], keys)
        full[:, 2:T - 1:2] = np.where(noise, noise_tok[..., 1], values)
        full[:, T - 1] = probe_key
        full[:, T] = table[rows, probe_key]
        inputs = full[:, :T]
        if split == "train" and c.train_targets == "all":
            return inputs, full[:, 1:].copy()
        targets = np.full((n, T), IGNORE, dtype=np.int64)
        key_pos = 1 + 2 * np.arange(m)  # the position of each motif's first token predicts its second
        targets[:, key_pos] = np.where(repeat, values, IGNORE)
        targets[:, T - 1] = full[:, T]
        return inputs, targets
