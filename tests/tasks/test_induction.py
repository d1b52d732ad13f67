"""``induction`` (H3): an independent decoder finds the two triggers in the inputs alone and checks the one scored
target is the token after the first; the trigger's position range, H3's vocabulary, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightformer.tasks import IGNORE, create_task


def decode(row: list[int], vocab_size: int) -> tuple[int, int]:
    """(position of the first trigger, the answer) from the inputs alone."""
    T, trigger = len(row), vocab_size - 2
    where = [t for t, tok in enumerate(row) if tok == trigger]
    assert len(where) == 2 and where[1] == T - 1, "the trigger appears once, then again at the end"
    assert vocab_size - 1 not in row, "H3's no-op token is never emitted"
    return where[0], row[where[0] + 1]


@pytest.mark.parametrize("split", ["val", "test", "train"])
def test_only_the_last_position_is_scored(split):
    task = create_task("induction", train_targets="probe", num_train_examples=0)
    x, y = task.sample(split, 3000)
    assert x.shape == (3000, 31) and task.vocab[-2:] == ("=>", ".") and task.vocab_size == 20
    first = []
    for row, tgt in zip(x.tolist(), y.tolist()):
        p, answer = decode(row, 20)
        assert tgt == [IGNORE] * 30 + [answer]
        first.append(p)
    first = np.array(first)
    assert first.min() == 0 and first.max() == 27  # H3: uniform over [0, input_seq_len - 2)
    assert abs(first.mean() - 13.5) < 0.6
    answers = y[:, -1]
    assert int(answers.min()) == 0 and int(answers.max()) == 17


def test_training_targets_all_are_the_next_tokens():
    task = create_task("induction", seq_len=16, num_train_examples=64)
    x, y = task.sample("train", 64)
    for row, tgt in zip(x.tolist(), y.tolist()):
        _, answer = decode(row, 20)
        assert tgt[:-1] == row[1:] and tgt[-1] == answer
    probe = create_task("induction", seq_len=16, num_train_examples=64, train_targets="probe")
    xp, yp = probe.sample("train", 64)
    assert torch.equal(xp, x) and int((yp != IGNORE).sum()) == 64


def test_deterministic_and_splits_differ():
    a, b = create_task("induction", seq_len=16), create_task("induction", seq_len=16)
    for split in ("train", "val", "test"):
        assert all(torch.equal(u, v) for u, v in zip(a.sample(split, 32, seed=5), b.sample(split, 32, seed=5)))
    assert not torch.equal(a.sample("val", 32)[0], a.sample("test", 32)[0])
    assert a.train_pool()[0].shape == (5000, 16)


@pytest.mark.parametrize("options, name", [
    ({"seq_len": 3}, "seq_len"),
    ({"vocab_size": 3}, "vocab_size"),
    ({"train_targets": "final"}, "train_targets"),
    ({"num_train_examples": -2}, "num_train_examples"),
])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        create_task("induction", **options)
