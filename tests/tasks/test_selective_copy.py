"""``selective_copy`` (MAD): an independent decoder collects the data tokens of the inputs in order and checks that
the targets after the copy token are exactly they; the layout, the blank distribution, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightformer.tasks import IGNORE, create_task


def decode(row: list[int], vocab_size: int, copies: int) -> tuple[list[int], list[int]]:
    """From the inputs alone: the expected targets, and the blank counts in front of each data token."""
    T = len(row)
    blank, copy = vocab_size - 2, vocab_size - 1
    assert row.count(copy) == 1
    c = row.index(copy)
    assert row[c + 1:] == [blank] * (T - c - 1), "only blanks after the copy token"
    data = [t for t in row[:c] if t != blank]
    assert len(data) == copies and all(0 <= t < blank for t in data)
    assert row[c - 1] != blank, "MAD puts every blank in front of a data token"
    gaps, run = [], 0
    for t in row[:c]:
        if t == blank:
            run += 1
        else:
            gaps.append(run)
            run = 0
    want = [IGNORE] * (c + 1) + data
    assert len(want) == T
    return want, gaps


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_targets_are_the_data_tokens_in_order(split):
    task = create_task("selective_copy", seq_len=40, num_tokens_to_copy=6, num_train_examples=50)
    x, y = task.sample(split, 200)
    for row, tgt in zip(x.tolist(), y.tolist()):
        want, gaps = decode(row, 16, 6)
        assert tgt == want and sum(gaps) == 40 - 2 * 6 - 1
    assert int((y != IGNORE).sum()) == 200 * 6


def test_default_layout_and_blank_distribution():
    task = create_task("selective_copy", num_train_examples=0)
    assert task.seq_len == 256 and task.vocab == tuple(f"t{i}" for i in range(14)) + ("blank", "copy")
    x, y = task.sample("test", 1000)
    gaps = np.array([decode(row, 16, 16)[1] for row in x.tolist()])  # [n, 16]
    assert (x[:, 256 - 17] == 15).all() and gaps.sum(1).tolist() == [223] * 1000
    # multinomial(223, 1/16): each count has mean 13.94 and sd 3.6, so the mean over 1000 rows is within ~0.11
    assert np.abs(gaps.mean(0) - 223 / 16).max() < 0.6
    assert 3.0 < gaps[:, 0].std() < 4.2
    data = y[:, -16:]
    assert abs(float(data.float().mean()) - 6.5) < 0.2  # uniform over t0..t13


def test_deterministic_and_splits_differ():
    a = create_task("selective_copy", seq_len=32, num_tokens_to_copy=4)
    b = create_task("selective_copy", seq_len=32, num_tokens_to_copy=4)
    assert all(torch.equal(u, v) for u, v in zip(a.sample("train", 10, seed=2), b.sample("train", 10, seed=2)))
    assert all(torch.equal(u, v) for u, v in zip(a.sample("val", 10), b.sample("val", 10)))
    assert not torch.equal(a.sample("val", 10)[0], a.sample("test", 10)[0])


@pytest.mark.parametrize("options, name", [
    ({"seq_len": 33, "num_tokens_to_copy": 16}, "seq_len"),
    ({"vocab_size": 2}, "vocab_size"),
    ({"num_tokens_to_copy": 0}, "num_tokens_to_copy"),
    ({"num_train_examples": -1}, "num_train_examples"),
    ({"seq_len": True}, "seq_len"),
])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        create_task("selective_copy", **options)
