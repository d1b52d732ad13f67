"""``memorization`` (MAD): an independent decoder rebuilds the key -> value map from the training pool alone and
checks it is one fixed injective map that every split asks (validation and test only ask trained facts); the
pool, the map's dependence on the task seed, errors."""

from __future__ import annotations

import pytest
import torch

from lightformer.tasks import IGNORE, create_task


def facts(x: torch.Tensor, y: torch.Tensor, vocab_size: int) -> dict[int, int]:
    """key -> value read off ``key insert`` lookups, asserting the layout and that each key has one value."""
    insert, num_keys = vocab_size - 1, (vocab_size - 1) // 2
    assert (x[:, 1::2] == insert).all() and (y[:, 0::2] == IGNORE).all()
    keys, values = x[:, 0::2].flatten().tolist(), y[:, 1::2].flatten().tolist()
    table: dict[int, int] = {}
    for k, v in zip(keys, values):
        assert 0 <= k < num_keys and num_keys <= v < insert
        assert table.setdefault(k, v) == v, f"key {k} asked twice with different values"
    return table


def test_one_fixed_map_for_every_split():
    task = create_task("memorization")
    assert task.seq_len == 32 and task.vocab_size == 256 and task.vocab[-1] == "insert"
    x, y = task.sample("train", 256)
    train = facts(x, y, 256)
    assert torch.equal(x, torch.from_numpy(task.train_pool()[0]))  # seed=None: the whole pool, in order
    assert len(train) == 127, "256 x 16 lookups show every one of the 127 keys"
    assert len(set(train.values())) == 127, "distinct keys have distinct values"
    for split in ("val", "test"):
        xs, ys = task.sample(split, 300)
        asked = facts(xs, ys, 256)
        assert all(train[k] == v for k, v in asked.items()), f"{split} asks the training facts"
        assert len(asked) > 100
    again = facts(*task.sample("train", 64, seed=11), 256)
    assert all(train[k] == v for k, v in again.items())


def test_evaluation_asks_only_keys_the_pool_shows():
    task = create_task("memorization", vocab_size=512, seq_len=8, num_train_examples=10)  # 40 lookups, 255 keys
    train = facts(*task.sample("train", 10), 512)
    assert len(train) < 40
    for split in ("val", "test"):
        asked = facts(*task.sample(split, 500), 512)
        assert set(asked) == set(train) and all(train[k] == v for k, v in asked.items())
    fresh = create_task("memorization", vocab_size=64, seq_len=8, num_train_examples=0)
    assert len(facts(*fresh.sample("test", 400), 64)) == 31  # no pool: every key is asked


def test_pool_draws_and_determinism():
    task = create_task("memorization", vocab_size=64, seq_len=16, num_train_examples=32)
    pool = {tuple(r) for r in task.train_pool()[0].tolist()}
    drawn = task.sample("train", 100, seed=3)[0]  # n > pool: with replacement
    assert all(tuple(r) in pool for r in drawn.tolist()) and len({tuple(r) for r in drawn.tolist()}) <= 32
    other = create_task("memorization", vocab_size=64, seq_len=16, num_train_examples=32)
    assert (task.kv_map == other.kv_map).all()
    assert all(torch.equal(a, b) for a, b in zip(task.sample("val", 8), other.sample("val", 8)))
    reseeded = create_task("memorization", vocab_size=64, seq_len=16, num_train_examples=32, seed=1)
    assert (reseeded.kv_map != task.kv_map).any(), "the task seed fixes the map"


@pytest.mark.parametrize("options, name", [
    ({"seq_len": 31}, "seq_len"),
    ({"vocab_size": 2}, "vocab_size"),
    ({"num_train_examples": -1}, "num_train_examples"),
    ({"vocab_size": 256.0}, "vocab_size"),
])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        create_task("memorization", **options)
