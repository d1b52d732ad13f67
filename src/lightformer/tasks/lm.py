"""``lm``: next-token language modelling on a real text corpus (``tasks/text.py``), the task of ``lightformer train``
and of ``compare``'s quality column.

Data: ``"stdlib"`` (the Python standard library's source on this machine, bytes) or any file. Split by position,
as nanoGPT does: the first 90% is ``train``, the last 10% ``val``. nanoGPT's protocol has no test split, and the
numbers here are meant to compare with its published validation losses, so ``test`` draws windows from the same
last 10% with a seed stream of its own (disjoint seeds, not disjoint text; say so when quoting a test number).
Windows of ``block_size`` tokens at random offsets; every position is scored. Metrics: ``bpc``, bits per token
(per byte or per char, as the tokenizer says), and ``loss`` in nats per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from ..models.config import ModelConfig
from .base import LN2, TASKS, Loss, Task, TaskConfig, check_int
from .text import TOKENIZERS, ByteTokenizer, Corpus, Tokenizer


@dataclass(frozen=True)
class LMConfig(TaskConfig):
    """Attributes:
        data: ``"stdlib"`` or a file path; tokenizer: ``"byte" | "char"``.
        block_size: tokens per window (the context length T).
        val_fraction: the last fraction of the text held out.
    """

    data: str = "stdlib"
    tokenizer: str = "byte"
    block_size: int = 256
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "block_size")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")


@TASKS.register("lm")
class LanguageModelling(Task):
    """Next-token prediction on a corpus: ``sample`` returns ``(inputs [n, T] int64, targets [n, T] int64)``,
    targets = inputs shifted by one. ``corpus`` may be passed in (already loaded) to share it between runs.

    Raises:
        FileNotFoundError: ``data`` names a file that does not exist.
        ValueError: ``block_size`` longer than a split.
    """

    config_class = LMConfig
    kind = "lm"
    metrics = ("bpc", "loss")
    example_options = {"block_size": 32}

    def __init__(self, config: LMConfig, corpus: Corpus | None = None, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(config)
        if corpus is not None:
            self.__dict__["corpus"] = corpus
        self._tokenizer = tokenizer

    @cached_property
    def corpus(self) -> Corpus:
        """The data, loaded on first use (with the given tokenizer, e.g. a checkpoint's, else a fitted one)."""
        c = self.config
        return Corpus.load(c.data, tokenizer=self._tokenizer or c.tokenizer, val_fraction=c.val_fraction)

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer, without loading the data when it is known (given, or bytes)."""
        if "corpus" in self.__dict__:
            return self.corpus.tokenizer
        if self._tokenizer is not None:
            return self._tokenizer
        return ByteTokenizer() if self.config.tokenizer == "byte" else self.corpus.tokenizer

    @classmethod
    def from_corpus(cls, corpus: Corpus, *, block_size: int, seed: int = 0) -> "LanguageModelling":
        return cls(LMConfig(seed=seed, data=corpus.name, tokenizer=corpus.tokenizer.kind, block_size=block_size),
                   corpus)

    @property
    def seq_len(self) -> int:
        return self.config.block_size

    @property
    def vocab(self) -> tuple[str, ...]:
        tok = self.tokenizer
        if tok.kind == "char":
            return tuple(tok.chars)
        return tuple(bytes([i]).decode("latin-1") for i in range(256))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)])

    def _sample(self, split: str, n: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.corpus.split("train" if split == "train" else "val")
        T = self.config.block_size
        if T + 1 > len(data):
            raise ValueError(f"block_size={T} is too long for the {split} split ({len(data)} tokens)")
        rng = self.rng(split, seed)
        starts = torch.from_numpy(rng.integers(0, len(data) - T, size=n))
        windows = data[starts[:, None] + torch.arange(T + 1)]  # [n, T + 1]
        return windows[:, :-1], windows[:, 1:]

    def build_model(self, model: ModelConfig) -> nn.Module:
        from ..models.heads import LanguageModel

        return LanguageModel(dataclasses.replace(self.model_config(model), causal=True))

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        inputs, targets = batch
        logits, loss = model(inputs, targets)
        count = targets.numel()
        nats = float(loss.detach()) * count
        return Loss(loss, count, {"bpc": nats / LN2, "loss": nats}, logits.flatten(0, 1), targets.flatten())

    def count(self, batch: tuple) -> int:
        return batch[1].numel()  # every position is scored

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, targets = batch
        return f"inputs : {self.decode(inputs[i])!r}\ntargets: {self.decode(targets[i])!r} (inputs shifted by one)"
