"""``retrieval``: byte-level document matching with a two-tower model, Long Range Arena's Retrieval task with AAN
replaced by the Python standard library's source.

Source: Tay et al. 2021, "Long Range Arena: A Benchmark for Efficient Transformers" (ICLR), Sec. 3 (Document
retrieval: do two byte-level documents of the ACL Anthology Network have a citation link; 4K bytes each, 8K in
all; 2 classes; a shared encoder pools each document and an MLP classifies ``[u, v, u*v, u-v]``) and Table 1,
Retrieval column (accuracy %): Transformer 57.46, Local Attention 53.39, Sparse Transformer 59.59, Longformer
56.89, Linformer 52.27, Reformer 53.40, Sinkhorn 53.83, Synthesizer 54.67, BigBird 59.29, Linear Transformer 53.09,
Performer 53.82. Those numbers are on AAN; numbers of this task do not compare with them, only the shape does.

What replaces AAN and why: LRA redistributes only the AAN pair ids, and the texts had to come from aan.how, which
is gone; nothing of it is available offline. The standard library's ``.py`` source (``tasks.text.stdlib_files()``)
is real text that every machine with Python has. The question becomes: do two byte windows come from the same
source file (label 1 = ``"same"``) or from two different files (0 = ``"different"``)?

Parameters and choices:

- ``window`` bytes per document, default 2048, so a pair is 2 x 2048 = 4K bytes (half of LRA's 2 x 4K, which is
  out of a 2-core CPU's reach for the exact baseline).
- Files: the stdlib files of at least ``2 * window`` bytes (so a positive's two windows never overlap), exact
  duplicates dropped (the first in path order is kept); the same pool serves both labels, so the file-size
  distribution says nothing about the label. Every window is full length (masks all True).
- Split by file, not by position: a file goes to ``val`` when ``sha256(f"{seed}/{relative path}")`` is 0 modulo
  10, to ``test`` when it is 1, to ``train`` otherwise — about 80/10/10 of the files (at the default window on
  CPython 3.11: 465 files). A file's split depends only on the seed and its path, so it is the same for every
  ``window`` and on every Python version that has the file.
- Labels are balanced exactly: a shuffled round robin ``arange(n) % 2``. A positive draws one file of the split
  uniformly and two non-overlapping windows of it (two offsets drawn independently from ``[0, len - 2 * window]``,
  sorted, the later one moved on by ``window``), in random order; the windows share
  no bytes, so matching by exact substring does not solve it. A negative draws two distinct files uniformly, and a
  window at a uniform offset in each.
- The standard library differs between Python versions: ``data_sha256`` is the digest of the file pool (relative
  paths and contents), to record with results so they say which data they came from.

Known weak spot: the 77 machine-generated codec tables of ``encodings/`` (``cp1250.py`` …) look alike, so a
negative pair of two of them is close to undecidable (about 3% of the negatives at the default window).
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import sysconfig
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .base import SPLITS, TASKS, ByteVocabulary, PairTask, TaskConfig, check_int
from .text import stdlib_files

#: Percent buckets of ``sha256(f"{seed}/{path}") % 10`` that go to each split.
SPLIT_BUCKETS = {"val": (0,), "test": (1,), "train": tuple(range(2, 10))}


@functools.cache
def _stdlib_documents() -> tuple[tuple[str, np.ndarray], ...]:
    """``(relative path, uint8 contents)`` of every distinct ``stdlib_files()`` file, in path order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    seen: set[bytes] = set()
    docs = []
    for path in stdlib_files():
        raw = path.read_bytes()
        key = hashlib.sha256(raw).digest()
        if key in seen:
            continue
        seen.add(key)
        docs.append((path.relative_to(root).as_posix(), np.frombuffer(raw, dtype=np.uint8)))
    return tuple(docs)


def split_of(path: str, seed: int) -> str:
    """The split of the stdlib file at relative ``path`` (``"email/utils.py"``) for task seed ``seed``."""
    bucket = int(hashlib.sha256(f"{seed}/{path}".encode()).hexdigest(), 16) % 10
    return next(s for s, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


@dataclass(frozen=True)
class RetrievalConfig(TaskConfig):
    """Attributes:
        window: bytes per document (the length T of each tower's input); files shorter than ``2 * window`` are
            not used.
    """

    window: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "window")


@TASKS.register("retrieval")
class Retrieval(ByteVocabulary, PairTask):
    """Same source file or not, for two byte windows of the standard library (see the module docstring).

    ``sample(split, n)`` returns ``((inputs1 [n, window] int64 in [0, 256), mask1 [n, window] bool),
    (inputs2, mask2), labels [n] int64)``, label 1 = same file.

    Raises:
        ValueError: from ``sample``, when ``window`` leaves fewer than 2 files in a split (the message gives the
            count).
    """

    config_class = RetrievalConfig
    example_options = {"window": 64}

    @property
    def seq_len(self) -> int:
        return self.config.window

    @cached_property
    def _pool(self) -> tuple[tuple[str, np.ndarray], ...]:
        return tuple(d for d in _stdlib_documents() if len(d[1]) >= 2 * self.config.window)

    @cached_property
    def _splits(self) -> dict[str, tuple[tuple[str, np.ndarray], ...]]:
        out: dict[str, list] = {s: [] for s in SPLITS}
        for doc in self._pool:
            out[split_of(doc[0], self.config.seed)].append(doc)
        for split, docs in out.items():
            if len(docs) < 2:
                raise ValueError(f"window={self.config.window} leaves {len(docs)} standard-library files of at "
                                 f"least {2 * self.config.window} bytes in the {split} split; at least 2 are needed")
        return {s: tuple(v) for s, v in out.items()}

    def files(self, split: str) -> tuple[str, ...]:
        """The relative paths of ``split``'s files (path order)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return tuple(path for path, _ in self._splits[split])

    @cached_property
    def data_sha256(self) -> str:
        """sha256 over the file pool (every split): each file's relative path and the sha256 of its contents."""
        digest = hashlib.sha256()
        for path, data in self._pool:
            digest.update(path.encode() + b"\0" + hashlib.sha256(data.tobytes()).digest())
        return digest.hexdigest()

    def _sample(self, split: str, n: int, seed: int | None) -> tuple:
        docs = self._splits[split]
        rng = self.rng(split, seed)
        T = self.config.window
        labels = rng.permutation(np.arange(n) % 2)
        first = np.empty((n, T), dtype=np.uint8)
        second = np.empty((n, T), dtype=np.uint8)
        for i, label in enumerate(labels):
            if label:
                data = docs[int(rng.integers(len(docs)))][1]
                # two offsets from [0, L - 2T], sorted, the later one moved on by T: always >= T apart
                a, b = np.sort(rng.integers(len(data) - 2 * T + 1, size=2))
                a, b = (int(a), int(b) + T) if rng.random() < 0.5 else (int(b) + T, int(a))
                first[i], second[i] = data[a:a + T], data[b:b + T]
            else:
                j, k = rng.choice(len(docs), size=2, replace=False)
                for out, data in ((first, docs[j][1]), (second, docs[k][1])):
                    offset = int(rng.integers(len(data) - T + 1))
                    out[i] = data[offset:offset + T]
        mask = torch.ones(n, T, dtype=torch.bool)
        return ((torch.from_numpy(first).long(), mask), (torch.from_numpy(second).long(), mask.clone()),
                torch.from_numpy(labels).long())
