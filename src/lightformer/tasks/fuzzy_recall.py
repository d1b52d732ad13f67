"""Fuzzy in-context recall: one of the six MAD probes of Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures" (ICML 2024, arXiv 2403.17844); generator reimplemented from the description of mad-lab's
``generate_fuzzy_in_context_recall_instance`` (``mad/data/instances.py``), baseline from
``configs/tasks/fuzzy-in-context-recall.yml``.

The task. Keys and values are *motifs*: a key is 1..``k_motif_size`` distinct key tokens, a value 1..``v_motif_size``
distinct value tokens (MAD draws every motif from ``itertools.permutations`` of its vocabulary, so no token repeats
inside a motif). A sequence is a run of key-value pairs; within a sequence a key keeps its value (a new key gets a
fresh value of random length). The last pair repeats a key seen earlier (the probe), so every sequence asks at
least once. Scored: every value token of a repeated key, at the position that predicts it (MAD's multi-query
setting, the one its benchmark uses). The model must find where a motif starts and ends: a key of one token may be
the start of another key of three.

- Lengths: training keys have a length uniform in 1..k, evaluation keys (val, test) always k tokens ("at test
  time keys are always at the maximum motif size"); value lengths are uniform in 1..v everywhere.
- Vocabulary (MAD's multi-query layout, ``V = vocab_size``): keys ``[0, (V-1)//2)`` (``k0 k1 …``), values
  ``[(V-1)//2, V-1)`` (``v0 v1 …``), pad ``V-1``. V = 16: 7 key tokens, 8 value tokens.
- Layout: the sequence is left-padded with ``pad`` to T + 1 tokens; inputs are its first T, the next-token targets
  its last T (as MAD pads to ``seq_len + 1`` and shifts). Pairs are added while they fit into
  ``T + 1 - (k + v)`` tokens (room for the probe), so fewer than ``2·(k + v)`` pads open each sequence.
- Training targets: ``train_targets="all"`` (MAD) scores the next token at every training position (pads and
  random keys included: MAD trains its recall tasks as plain language models); ``"probe"`` scores only what
  evaluation scores. Evaluation always scores the repeated values only.
- Differences from MAD's generator: the probe repeats a uniformly chosen earlier pair (MAD draws a probe pair,
  inserts it at a random offset and repeats it at the end; when that offset falls past the loop it is never
  inserted and the final query is unanswerable, which cannot happen here); pairs stop when the next one would
  overflow (MAD overshoots by up to one pair and pads less). Sampling is vectorised.

Defaults = MAD's baseline: V = 16, T = 128, k = v = 3, 12,800 training examples (``num_train_examples``; MAD's
test set is 1,280). MAD's "changes", one at a time: ``vocab_size`` {32, 64, 128}; ``seq_len`` {256, 512, 1024};
``num_train_examples`` {6400, 3200, 1600, 800}. MAD's protocol: width 128, batch 128, 200 epochs, AdamW with
lr {1e-4, 5e-4, 1e-3} × weight decay {0, 0.1}, cosine to 1e-6, best run counts; a model's MAD score is its mean
accuracy over all settings of all six tasks. Published: only that mean, read off mad-lab's
``assets/mad_to_scale.png`` (Hyena+SwiGLU ≈ 0.66, MH-Hyena ≈ 0.73, Striped Hyena+SwiGLU ≈ 0.77, Striped
Hyena-Experts+MoE ≈ 0.78); fuzzy recall's own numbers are in the paper's figures, not in our notes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .base import IGNORE, TASKS, TaskConfig, check_int
from ._probe import TRAIN_TARGETS, ProbeTask, check_choice, draw_distinct, first_occurrence


@dataclass(frozen=True)
class FuzzyRecallConfig(TaskConfig):
    """Attributes:
        vocab_size: V, all tokens (keys, values and pad).
        seq_len: T, the length of the inputs.
        k_motif_size: longest key motif k (evaluation keys are exactly k long); needs ``(V-1)//2 >= k``.
        v_motif_size: longest value motif v; needs ``V-1 - (V-1)//2 >= v``.
        num_train_examples: size of the fixed training pool; 0 = a fresh draw for every training batch.
        train_targets: ``"all"`` (every next token, MAD) or ``"probe"`` (the evaluated positions only).
    """

    vocab_size: int = 16
    seq_len: int = 128
    k_motif_size: int = 3
    v_motif_size: int = 3
    num_train_examples: int = 12_800
    train_targets: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", low=3)
        check_int(self, "seq_len", "k_motif_size", "v_motif_size")
        check_int(self, "num_train_examples", low=0)
        check_choice(self, "train_targets", TRAIN_TARGETS)
        num_keys = (self.vocab_size - 1) // 2
        if self.k_motif_size > num_keys:
            raise ValueError(f"k_motif_size={self.k_motif_size}: a key motif has distinct tokens, and "
                             f"vocab_size={self.vocab_size} has only {num_keys} key tokens")
        if self.v_motif_size > self.vocab_size - 1 - num_keys:
            raise ValueError(f"v_motif_size={self.v_motif_size}: a value motif has distinct tokens, and "
                             f"vocab_size={self.vocab_size} has only {self.vocab_size - 1 - num_keys} value tokens")
        pair = self.k_motif_size + self.v_motif_size
        if self.seq_len + 1 < 2 * pair:
            raise ValueError(f"seq_len={self.seq_len} is too short for one pair and the probe: seq_len + 1 must be "
                             f">= 2·(k_motif_size + v_motif_size) = {2 * pair}")
        if (num_keys + 1) ** self.k_motif_size >= 2 ** 62:
            raise ValueError(f"k_motif_size={self.k_motif_size} with vocab_size={self.vocab_size}: too many "
                             "distinct keys to index")


@TASKS.register("fuzzy_recall")
class FuzzyRecall(ProbeTask):
    """MAD's fuzzy in-context recall (see the module docstring).

    ``sample(split, n)`` -> ``(inputs [n, T] int64, targets [n, T] int64)``: ``targets[i, t]`` is the token that
    follows position ``t`` where it is scored (a value token of a repeated key; every position on the training
    split with ``train_targets="all"``), else ``IGNORE``.

    Raises:
        ValueError: from the config: a bad option value, motifs longer than their vocabulary, or a ``seq_len``
            too short for one pair plus the probe.
    """

    config_class = FuzzyRecallConfig
    example_options = {"seq_len": 32, "num_train_examples": 64}

    @property
    def num_keys(self) -> int:
        return (self.config.vocab_size - 1) // 2

    @property
    def pad(self) -> int:
        return self.config.vocab_size - 1

    @functools.cached_property
    def vocab(self) -> tuple[str, ...]:
        nk, nv = self.num_keys, self.config.vocab_size - 1 - self.num_keys
        return tuple(f"k{i}" for i in range(nk)) + tuple(f"v{i}" for i in range(nv)) + ("pad",)

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        T, K, W = c.seq_len, c.k_motif_size, c.v_motif_size
        nk, nv = self.num_keys, c.vocab_size - 1 - self.num_keys
        train = split == "train"
        budget = T + 1 - (K + W)  # tokens for the pairs before the probe
        slots = budget // ((1 if train else K) + 1)  # enough pairs to fill the budget with the shortest motifs
        shape = (n, slots)
        key_len = rng.integers(1, K + 1, size=shape) if train else np.full(shape, K, dtype=np.int64)
        value_len = rng.integers(1, W + 1, size=shape)
        key_tok = draw_distinct(rng, shape, nk, K)  # [n, S, K]; a key is its first key_len tokens
        value_tok = nk + draw_distinct(rng, shape, nv, W)  # [n, S, W]
        # a key's identity: its tokens as base-(nk+1) digits (token + 1, unused digits 0: lengths differ)
        digits = np.where(np.arange(K) < key_len[..., None], key_tok + 1, 0)
        ids = (digits * (nk + 1) ** np.arange(K, dtype=np.int64)).sum(-1)  # [n, S]
        first = first_occurrence(ids)
        value_len = np.take_along_axis(value_len, first, axis=1)  # a key keeps the value of its first pair
        value_tok = np.take_along_axis(value_tok, first[..., None], axis=1)
        repeat = first != np.arange(slots)
        kept = np.cumsum(key_len + value_len, axis=1) <= budget  # a prefix; the first pair always fits
        rows = np.arange(n)
        probe = rng.integers(0, kept.sum(1))  # [n] the earlier pair the probe repeats

        def with_probe(a: np.ndarray, last: np.ndarray) -> np.ndarray:
            return np.concatenate([a, last[:, None]], axis=1)

        key_len, value_len = with_probe(key_len, key_len[rows, probe]), with_probe(value_len, value_len[rows, probe])
        key_tok, value_tok = with_probe(key_tok, key_tok[rows, probe]), with_probe(value_tok, value_tok[rows, probe])
        repeat = with_probe(repeat, np.ones(n, dtype=bool))
        kept = with_probe(kept, np.ones(n, dtype=bool))

        size = np.where(kept, key_len + value_len, 0)  # [n, S+1] tokens of each pair
        length = size.sum(1)  # [n] <= T + 1
        start = (T + 1 - length)[:, None] + np.cumsum(size, axis=1) - size  # right-aligned: pads on the left
        tokens = np.concatenate([key_tok, value_tok], axis=2)  # [n, S+1, K+W]
        offset = np.concatenate([np.broadcast_to(np.arange(K), key_tok.shape),
                                 key_len[..., None] + np.arange(W)], axis=2)  # place inside the pair
        present = np.concatenate([np.arange(K) < key_len[..., None], np.arange(W) < value_len[..., None]], axis=2)
        present &= kept[..., None]
        r, s, j = np.nonzero(present)
        where = start[r, s] + offset[r, s, j]
        full = np.full((n, T + 1), self.pad, dtype=np.int64)
        full[r, where] = tokens[r, s, j]
        full_scored = np.zeros((n, T + 1), dtype=bool)
        full_scored[r, where] = repeat[r, s] & (j >= K)  # the values of repeated keys
        inputs, following = full[:, :T], full[:, 1:]
        if train and c.train_targets == "all":
            return inputs, following.copy()
        return inputs, np.where(full_scored[:, 1:], following, IGNORE)
