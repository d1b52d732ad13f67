"""Real text for language modelling: tokenizers, corpora, a positional train/validation split, random windows.

The built-in corpus ``stdlib`` is the Python standard library's own ``.py`` source on the running machine (files
in sorted order, test folders and site-packages excluded), so every machine with Python has real text no one here
wrote. Any other UTF-8 or binary file works through ``Corpus.from_file``. The split is by position — first 90%
train, last 10% validation — as nanoGPT does, so character-level numbers compare with its published ones.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sysconfig
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

TOKENIZERS = ("byte", "char")
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


class ByteTokenizer:
    """Raw bytes: vocabulary 256, lossless for any file. ``encode(str | bytes) -> list[int]``."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"kind": "byte"}


class CharTokenizer:
    """One id per distinct Unicode character of the corpus (sorted), as in char-rnn / nanoGPT's char-level
    Shakespeare. ``encode`` raises ValueError naming a character outside the vocabulary."""

    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("chars must be a non-empty list of distinct characters")
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"text has character {e.args[0]!r} outside the tokenizer's vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict:
        return {"kind": "char", "chars": self.chars}


Tokenizer = ByteTokenizer | CharTokenizer


def tokenizer_from_json(data: dict) -> Tokenizer:
    if data.get("kind") == "byte":
        return ByteTokenizer()
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"])
    raise ValueError(f"unknown tokenizer kind {data.get('kind')!r}; expected one of {TOKENIZERS}")


def stdlib_files() -> list[pathlib.Path]:
    """The standard library's ``.py`` files on this machine, sorted, without test folders and site-packages."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        if not EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            files.append(path)
    if not files:
        raise FileNotFoundError(f"no standard-library sources found under {root}")
    return files


def stdlib_bytes() -> bytes:
    """All ``stdlib_files()`` concatenated (each followed by a newline)."""
    return b"".join(p.read_bytes() + b"\n" for p in stdlib_files())


@dataclass
class Corpus:
    """A tokenized text with its positional split.

    Attributes:
        name: ``"stdlib"`` or the file path.
        tokenizer: the tokenizer used.
        train, val: 1-D int64 token tensors (first ``1 - val_fraction`` of the text, then the rest).
        sha256: digest of the raw bytes, recorded in results so numbers say which data they came from.
    """

    name: str
    tokenizer: Tokenizer
    train: Tensor
    val: Tensor
    sha256: str

    @classmethod
    def from_bytes(cls, raw: bytes, *, name: str, tokenizer: str | Tokenizer = "byte",
                   val_fraction: float = 0.1) -> "Corpus":
        """``tokenizer``: ``"byte"``, ``"char"`` (vocabulary fitted on ``raw``) or a tokenizer instance (e.g. the
        one a checkpoint was trained with)."""
        if isinstance(tokenizer, str) and tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        tok: Tokenizer
        if tokenizer == "byte" or isinstance(tokenizer, ByteTokenizer):
            tok = ByteTokenizer()
            ids = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))
        else:
            text = raw.decode("utf-8")
            tok = CharTokenizer.fit(text) if tokenizer == "char" else tokenizer
            ids = torch.tensor(tok.encode(text), dtype=torch.int64)
        n_train = int(len(ids) * (1.0 - val_fraction))
        if n_train < 2 or len(ids) - n_train < 2:
            raise ValueError(f"corpus {name!r} is too small to split ({len(ids)} tokens)")
        return cls(name, tok, ids[:n_train], ids[n_train:], hashlib.sha256(raw).hexdigest())

    @classmethod
    def from_file(cls, path: str | pathlib.Path, *, tokenizer: str | Tokenizer = "char", val_fraction: float = 0.1) -> "Corpus":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        return cls.from_bytes(path.read_bytes(), name=str(path), tokenizer=tokenizer, val_fraction=val_fraction)

    @classmethod
    def stdlib(cls, *, tokenizer: str | Tokenizer = "byte", val_fraction: float = 0.1) -> "Corpus":
        return cls.from_bytes(stdlib_bytes(), name="stdlib", tokenizer=tokenizer, val_fraction=val_fraction)

    @classmethod
    def load(cls, data: str, *, tokenizer: str | Tokenizer, val_fraction: float = 0.1) -> "Corpus":
        """``data`` is ``"stdlib"`` or a file path."""
        if data == "stdlib":
            return cls.stdlib(tokenizer=tokenizer, val_fraction=val_fraction)
        return cls.from_file(data, tokenizer=tokenizer, val_fraction=val_fraction)

    def split(self, name: str) -> Tensor:
        if name == "train":
            return self.train
        if name == "val":
            return self.val
        raise ValueError(f"split must be 'train' or 'val', got {name!r}")

    def batch(self, split: str, batch_size: int, block_size: int,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Random windows: inputs ``[batch_size, block_size]`` and next-token targets of the same shape (int64)."""
        data = self.split(split)
        if block_size + 1 > len(data):
            raise ValueError(f"block_size={block_size} is too long for the {split} split ({len(data)} tokens)")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        offsets = torch.arange(block_size + 1)
        windows = data[starts[:, None] + offsets]  # [B, block_size + 1]
        return windows[:, :-1], windows[:, 1:]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train) + len(self.val):,} tokens ({self.tokenizer.kind}, vocab "
                f"{self.tokenizer.vocab_size}), train {len(self.train):,} / val {len(self.val):,}")

    def tokenizer_json(self) -> str:
        return json.dumps(self.tokenizer.to_json())
