"""Selective copying: one of the six MAD probes of Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures" (ICML 2024, arXiv 2403.17844); generator reimplemented from the description of mad-lab's
``generate_selective_copying_instance`` (``mad/data/instances.py``), baseline from
``configs/tasks/selective-copying.yml``. The task goes back to Arjovsky et al.'s copying memory and is the
"selective copying" of Gu & Dao 2023 (Mamba, Sec. 3.1 and 4.1.1).

The task. ``C = num_tokens_to_copy`` data tokens (uniform, with replacement) are scattered among
``B = T - 2C - 1`` blanks; then come the copy token and ``C`` more blanks. At those last ``C`` positions the model
must output the data tokens in their order. Layout of the ``T`` inputs::

    [data tokens with B blanks in between] copy blank blank ... blank      (C trailing blanks)
    targets: IGNORE everywhere except the trailing blanks: target at T-C+i = the i-th data token

The target at a trailing blank is the token the model outputs there (MAD's targets are not shifted: the copy
token's own output is unscored, the first data token is due at the first blank after it). Targets are the same on
every split (MAD has no training-only targets for this task).

- Blank placement: MAD inserts each blank before a data token chosen uniformly (``np.insert`` at indices in
  ``[0, C)``), so the blank counts in front of the C data tokens are multinomial(B, 1/C each) and no blank falls
  between the last data token and the copy token. This is drawn here from the task's seeded generator: MAD's own
  generator takes the blank positions from the *global* ``np.random`` (not from its seeded ``rng``), so its data
  cannot be regenerated from the seed; ours can (same seed + split + draw = the same tensors).
- Vocabulary (``V = vocab_size``): data ``[0, V-2)`` (``t0 …``), blank ``V-2``, copy ``V-1``.

Defaults = MAD's baseline: V = 16, T = 256, C = 16, 12,800 training examples (MAD's test set is 1,280). MAD's
"changes", one at a time: ``vocab_size`` {32, 64, 128}; ``seq_len`` {512, 1024}; ``num_train_examples`` {6400,
3200, 1600, 800}; ``num_tokens_to_copy`` {32, 64, 96}. MAD asserts ``T > 2C + 1``. MAD's protocol: width 128,
batch 128, 200 epochs, AdamW with lr {1e-4, 5e-4, 1e-3} × weight decay {0, 0.1}, cosine to 1e-6, best run counts;
a model's MAD score is its mean accuracy over all settings of all six tasks. Published: only that mean, read off
mad-lab's ``assets/mad_to_scale.png`` (Hyena+SwiGLU ≈ 0.66, MH-Hyena ≈ 0.73, Striped Hyena+SwiGLU ≈ 0.77, Striped
Hyena-Experts+MoE ≈ 0.78); the per-task numbers are in the paper's figures, not in our notes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .base import IGNORE, TASKS, TaskConfig, check_int
from ._probe import ProbeTask


@dataclass(frozen=True)
class SelectiveCopyConfig(TaskConfig):
    """Attributes:
        vocab_size: V, all tokens (data, blank, copy), >= 3.
        seq_len: T, the length of the inputs; ``T > 2·num_tokens_to_copy + 1``.
        num_tokens_to_copy: C, the data tokens to copy.
        num_train_examples: size of the fixed training pool; 0 = a fresh draw for every training batch.
    """

    vocab_size: int = 16
    seq_len: int = 256
    num_tokens_to_copy: int = 16
    num_train_examples: int = 12_800

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "vocab_size", low=3)
        check_int(self, "seq_len", "num_tokens_to_copy")
        check_int(self, "num_train_examples", low=0)
        if self.seq_len <= 2 * self.num_tokens_to_copy + 1:
            raise ValueError(f"seq_len={self.seq_len} must be > 2·num_tokens_to_copy + 1 = "
                             f"{2 * self.num_tokens_to_copy + 1} (room for the tokens, at least one blank, the "
                             "copy token and the answer)")


@TASKS.register("selective_copy")
class SelectiveCopy(ProbeTask):
    """MAD's selective copying (see the module docstring).

    ``sample(split, n)`` -> ``(inputs [n, T] int64, targets [n, T] int64)``: ``targets[i, T-C+j]`` is the j-th
    data token of row i, every other target ``IGNORE``.

    Raises:
        ValueError: from the config: a bad option value or ``seq_len <= 2·num_tokens_to_copy + 1``.
    """

    config_class = SelectiveCopyConfig
    example_options = {"seq_len": 32, "num_tokens_to_copy": 4, "num_train_examples": 64}

    @property
    def blank(self) -> int:
        return self.config.vocab_size - 2

    @property
    def copy(self) -> int:
        return self.config.vocab_size - 1

    @functools.cached_property
    def vocab(self) -> tuple[str, ...]:
        return tuple(f"t{i}" for i in range(self.config.vocab_size - 2)) + ("blank", "copy")

    def _generate(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        T, C = c.seq_len, c.num_tokens_to_copy
        blanks = T - 2 * C - 1
        data = rng.integers(0, self.blank, size=(n, C))
        before = rng.multinomial(blanks, np.full(C, 1.0 / C), size=n)  # [n, C] blanks in front of each token
        where = np.arange(C) + np.cumsum(before, axis=1)  # [n, C] the data tokens' positions, last at T-C-2
        inputs = np.full((n, T), self.blank, dtype=np.int64)
        inputs[np.arange(n)[:, None], where] = data
        inputs[:, T - C - 1] = self.copy
        targets = np.full((n, T), IGNORE, dtype=np.int64)
        targets[:, T - C:] = data
        return inputs, targets
