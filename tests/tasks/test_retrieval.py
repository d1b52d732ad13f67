"""The ``retrieval`` task (same standard-library file or not, for two byte windows): every window is looked up in
the stdlib files, read here independently of the task, and the label is checked against where the windows occur."""

from __future__ import annotations

import bisect
import pathlib
import sysconfig

import numpy as np
import pytest
import torch

from lightformer.tasks import SPLITS, create_task
from lightformer.tasks.text import stdlib_files

WINDOW = 256


class Stdlib:
    """All stdlib files in one blob, to find every file a window occurs in with a few ``bytes.find`` calls."""

    def __init__(self) -> None:
        root = pathlib.Path(sysconfig.get_paths()["stdlib"])
        self.files = {p.relative_to(root).as_posix(): p.read_bytes() for p in stdlib_files()}
        self.names = list(self.files)
        self.starts, parts, pos = [], [], 0
        for name in self.names:
            self.starts.append(pos)
            parts.append(self.files[name])
            pos += len(self.files[name]) + 1
        self.blob = b"\0".join(parts)  # .py sources hold no NUL byte, so no match spans two files

    def occurrences(self, window: bytes) -> dict[str, list[int]]:
        """{file: offsets of ``window`` in it}."""
        out: dict[str, list[int]] = {}
        at = self.blob.find(window)
        while at >= 0:
            i = bisect.bisect_right(self.starts, at) - 1
            out.setdefault(self.names[i], []).append(at - self.starts[i])
            at = self.blob.find(window, at + 1)
        return out


@pytest.fixture(scope="module")
def stdlib() -> Stdlib:
    return Stdlib()


def as_bytes(x: torch.Tensor) -> bytes:
    return x.numpy().astype(np.uint8).tobytes()


def test_windows_are_verbatim_and_the_label_says_whether_the_files_are_the_same(stdlib):
    task = create_task("retrieval", window=WINDOW)
    assert b"\0" not in b"".join(stdlib.files.values())
    for split in SPLITS:
        split_files = set(task.files(split))
        (a, ma), (b, mb), labels = task.sample(split, 40, seed=3)
        assert a.shape == b.shape == (40, WINDOW) and bool(ma.all()) and bool(mb.all())
        for x, y, label in zip(a, b, labels.tolist()):
            where_x, where_y = stdlib.occurrences(as_bytes(x)), stdlib.occurrences(as_bytes(y))
            assert where_x and where_y, "every window occurs verbatim in a stdlib file"
            assert split_files & set(where_x) and split_files & set(where_y), "and in a file of its split"
            common = set(where_x) & set(where_y) & split_files
            if label == 1:
                # one file holds both windows, at offsets at least a window apart (no shared bytes)
                assert any(abs(i - j) >= WINDOW for f in common for i in where_x[f] for j in where_y[f])
            else:
                # two different files of the split explain the pair
                assert any(f != g for f in set(where_x) & split_files for g in set(where_y) & split_files)


def test_file_splits_are_disjoint_and_cover_the_long_files(stdlib):
    task = create_task("retrieval")
    splits = {s: set(task.files(s)) for s in SPLITS}
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
    long_enough = {f for f, raw in stdlib.files.items() if len(raw) >= 2 * 2048}
    union = set().union(*splits.values())
    assert union <= long_enough
    # every distinct long file is used once: only exact duplicates are dropped
    distinct = {raw for f, raw in stdlib.files.items() if f in long_enough}
    assert len(union) == len(distinct) and len({stdlib.files[f] for f in union}) == len(union)
    total = len(union)
    assert total > 300
    for split, (low, high) in {"train": (0.7, 0.9), "val": (0.05, 0.15), "test": (0.05, 0.15)}.items():
        assert low * total <= len(splits[split]) <= high * total, (split, len(splits[split]), total)
    # a file's split depends on the seed and its path only: the same at another window
    short = create_task("retrieval", window=WINDOW)
    for split in SPLITS:
        assert splits[split] <= set(short.files(split))
    assert create_task("retrieval", seed=1).files("test") != task.files("test")


def test_labels_are_balanced_exactly():
    task = create_task("retrieval", window=WINDOW)
    for split in SPLITS:
        assert np.bincount(task.sample(split, 200)[2].numpy(), minlength=2).tolist() == [100, 100]
    assert sorted(np.bincount(task.sample("train", 7, seed=2)[2].numpy()).tolist()) == [3, 4]


def test_deterministic():
    a, b = create_task("retrieval", window=WINDOW), create_task("retrieval", window=WINDOW)
    for split in SPLITS:
        (x1, m1), (y1, n1), l1 = a.sample(split, 10, seed=4)
        (x2, m2), (y2, n2), l2 = b.sample(split, 10, seed=4)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(l1, l2)
        assert torch.equal(m1, m2) and torch.equal(n1, n2)
    assert not torch.equal(a.sample("train", 10, seed=1)[0][0], a.sample("train", 10, seed=2)[0][0])
    assert a.data_sha256 == b.data_sha256 and len(a.data_sha256) == 64
    assert create_task("retrieval").data_sha256 != a.data_sha256, "the digest covers the file pool, which differs"


def test_decode_and_vocab():
    task = create_task("retrieval", window=WINDOW)
    assert task.vocab_size == 256 and task.seq_len == WINDOW and task.num_classes == 2
    assert task.decode(list(b"import os\n")) == "import os\n"
    assert task.decode(torch.tensor([0xc3, 0xa9, 0xff])) == "\u00e9\ufffd"


@pytest.mark.parametrize("options, message", [({"window": 0}, "window"), ({"window": True}, "window"),
                                              ({"window": "2048"}, "window"), ({"seed": -1}, "seed")])
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_task("retrieval", **options)


def test_a_window_too_long_for_the_files_is_named():
    task = create_task("retrieval", window=10_000_000)
    with pytest.raises(ValueError, match=r"window=10000000 leaves 0 standard-library files"):
        task.sample("train", 2)
