"""Compression: one of the six MAD probes of Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures" (ICML 2024, arXiv 2403.17844); generator reimplemented from the description of mad-lab's
``generate_compression_instance`` (``mad/data/instances.py``), baseline from ``configs/tasks/compression.yml``,
model after mad-lab's ``AutoEncoder`` (``mad/model/auto_encoder.py``).

The task. ``T - 1`` data tokens (uniform, with replacement), then the compression token. The model is an
autoencoder (``CompressionAutoEncoder``): a causal backbone (the architecture under test) reads the sequence, only
its hidden state at the last position — the compression token's — goes to an MLP decoder, which must output every
one of the ``T`` input tokens from it (fixed sinusoidal positions tell the decoder which one). The probe measures
how much of a sequence a mixer can pack into one position's state. Targets are the inputs themselves, all ``T``
positions scored, the compression token included (as MAD scores it: 1/T of the accuracy is that trivially known
token), the same on every split.

- Vocabulary (``V = vocab_size``): data ``[0, V-1)`` (``t0 …``), the compression token ``V-1`` (``compress``).
- Layout: ``(inputs [n, T], targets [n, T])`` with ``targets == inputs``; the target at position ``t`` is the
  token at ``t`` (a reconstruction, not a next token), so ``loss`` runs the autoencoder on ``[n, T, V]`` logits.
- MAD's generator also has a noise option (``frac_noise``, ``noise_vocab_size``) that its benchmark does not use
  (and whose masked targets it discards); it is not offered here.

Defaults = MAD's baseline: V = 16, T = 32, 12,800 training examples (MAD's test set is 1,280). MAD's "changes",
one at a time: ``vocab_size`` {32, 64, 128}; ``seq_len`` {64, 128, 256}; ``num_train_examples`` {6400, 3200, 1600,
800}. MAD's protocol: width 128, batch 128, 200 epochs, AdamW with lr {1e-4, 5e-4, 1e-3} × weight decay {0, 0.1},
cosine to 1e-6, best run counts; a model's MAD score is its mean accuracy over all settings of all six tasks.
Published: only that mean, read off mad-lab's ``assets/mad_to_scale.png`` (Hyena+SwiGLU ≈ 0.66, MH-Hyena ≈ 0.73,
Striped Hyena+SwiGLU ≈ 0.77, Striped Hyena-Experts+MoE ≈ 0.78); the notes add that compression accuracy tracks
lower Pile perplexity across those five architectures. Per-task numbers are in the paper's figures, not in our
notes.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..models.config import ModelConfig
from .base import IGNORE, TASKS, Loss, TaskConfig, check_int, classification_loss
from ._probe import ProbeTask


@dataclass(frozen=True)
class CompressionConfig(TaskConfig):
    """Attributes:
        vocab_size: V, all tokens (data and the compression token), >= 2.
        seq_len: T, the length of the inputs (T - 1 data tokens + the compression token), >= 2.
        num_train_examples: size of the fixed training pool; 0 = a fresh draw for every training batch.
    """

    vocab_size: int = 16
    seq_len: int = 32
    num_train_examples: int = 12_800

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", "seq_len", low=2)
        check_int(self, "num_train_examples", low=0)


@TASKS.register("compression")
class Compression(ProbeTask):
    """MAD's compression probe (see the module docstring).

    ``sample(split, n)`` -> ``(inputs [n, T] int64, targets [n, T] int64)`` with ``targets == inputs`` (the tokens
    to reconstruct). ``build_model`` gives a ``CompressionAutoEncoder``; ``loss`` scores its ``[n, T, V]``
    reconstruction logits at every position whose target is not ``IGNORE``.

    Raises:
        ValueError: from the config, a bad option value.
    """

    config_class = CompressionConfig
    example_options = {"seq_len": 16, "num_train_examples": 64}

    @property
    def compress(self) -> int:
        return self.config.vocab_size - 1

    @functools.cached_property
    def vocab(self) -> tuple[str, ...]:
        return tuple(f"t{i}" for i in range(self.config.vocab_size - 1)) + ("compress",)

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        T = self.config.seq_len
        inputs = np.empty((n, T), dtype=np.int64)
        inputs[:, :-1] = rng.integers(0, self.compress, size=(n, T - 1))
        inputs[:, -1] = self.compress
        return inputs, inputs.copy()

    def build_model(self, model: ModelConfig) -> nn.Module:
        """A ``CompressionAutoEncoder`` on ``model`` (causal, with this task's vocabulary and length)."""
        from ..models.heads import CompressionAutoEncoder

        return CompressionAutoEncoder(dataclasses.replace(self.model_config(model), causal=True))

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        """Mean cross-entropy of the reconstruction over the scored positions; ``accuracy`` = reconstructed tokens
        that are right (argmax), both per scored token."""
        inputs, targets = batch
        scored = targets != IGNORE
        return classification_loss(model(inputs)[scored], targets[scored])

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, targets = batch
        scored = targets[i] != IGNORE
        wanted = " ".join(self.vocab[int(t)] if s else "_" for t, s in zip(targets[i].tolist(), scored.tolist()))
        return (f"inputs : {self.decode(inputs[i])}\n"
                f"scored : {int(scored.sum())} positions, each to be rebuilt from the last position's state\n"
                f"rebuild: {wanted}")
