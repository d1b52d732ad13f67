"""``noisy_recall`` (MAD): an independent decoder reads the motifs of the inputs alone (noise pairs, key-value
pairs, the probe) and re-derives every scored target; the noise fraction, the vocabulary, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightformer.tasks import IGNORE, create_task

SMALL = {"seq_len": 40, "num_train_examples": 30}


def decode(task, row: list[int]) -> tuple[list[int], int, int, int]:
    """The expected targets of one row (from the inputs alone), its final answer, and its noise/pair counts."""
    T = len(row)
    nk, first_noise = task.num_keys, task.config.vocab_size - task.config.noise_vocab_size
    is_key = lambda t: 0 <= t < nk  # noqa: E731
    is_value = lambda t: nk <= t < first_noise  # noqa: E731
    is_noise = lambda t: first_noise <= t < task.config.vocab_size  # noqa: E731
    assert is_noise(row[0]), "one noise token opens the sequence"
    seen: dict[int, int] = {}
    want = [IGNORE] * T
    noise = pairs = 0
    for p in range(1, T - 1, 2):
        a, b = row[p], row[p + 1]
        if is_noise(a):
            assert is_noise(b), "noise comes in two-token motifs"
            noise += 1
            continue
        assert is_key(a) and is_value(b), (a, b)
        pairs += 1
        if a in seen:
            assert seen[a] == b, "a key keeps its value within a sequence"
            want[p] = b
        seen[a] = b
    probe = row[T - 1]
    assert is_key(probe) and probe in seen, "the probe asks a key shown before"
    want[T - 1] = seen[probe]
    return want, seen[probe], noise, pairs


@pytest.mark.parametrize("split", ["val", "test", "train"])
def test_targets_decode(split):
    task = create_task("noisy_recall", **SMALL, train_targets="probe")
    x, y = task.sample(split, 400)
    assert x.shape == (400, 40)
    for row, tgt in zip(x.tolist(), y.tolist()):
        want, _, _, pairs = decode(task, row)
        assert tgt == want and pairs >= 1
    assert int((y != IGNORE).sum()) > 400  # the probes and some repeated keys


def test_training_targets_all_are_the_next_tokens():
    task = create_task("noisy_recall", **SMALL)
    x, y = task.sample("train", 30)
    for row, tgt in zip(x.tolist(), y.tolist()):
        _, answer, _, _ = decode(task, row)
        assert tgt[:-1] == row[1:] and tgt[-1] == answer


def test_noise_fraction_and_vocabulary():
    task = create_task("noisy_recall", frac_noise=0.4, num_train_examples=0)
    assert task.vocab_size == 32 and task.num_keys == 8 and task.num_values == 8 and task.vocab[16] == "noise0"
    x, _ = task.sample("test", 1000)
    counts = np.array([decode(task, row)[2:] for row in x.tolist()])  # [n, (noise, pairs)]
    assert counts.sum(1).tolist() == [63] * 1000  # T/2 - 1 motifs before the probe
    # 62 free motifs per row (one is forced to be a pair): mean noise ≈ 0.4 · 62 = 24.8, sd of the mean ≈ 0.12
    assert abs(counts[:, 0].mean() - 0.4 * 62) < 0.6
    clean = create_task("noisy_recall", frac_noise=0.0, seq_len=16)
    xc, _ = clean.sample("val", 50)
    assert all(decode(clean, row)[2] == 0 for row in xc.tolist())


def test_deterministic_and_pool():
    a, b = create_task("noisy_recall", **SMALL), create_task("noisy_recall", **SMALL)
    assert all(torch.equal(u, v) for u, v in zip(a.sample("test", 16, seed=4), b.sample("test", 16, seed=4)))
    assert not torch.equal(a.sample("val", 16)[0], a.sample("test", 16)[0])
    pool = {tuple(r) for r in a.train_pool()[0].tolist()}
    assert len(pool) == 30 and all(tuple(r) in pool for r in a.sample("train", 50, seed=9)[0].tolist())


@pytest.mark.parametrize("options, name", [
    ({"seq_len": 33}, "seq_len"),
    ({"seq_len": 2}, "seq_len"),
    ({"frac_noise": 1.0}, "frac_noise"),
    ({"frac_noise": -0.1}, "frac_noise"),
    ({"noise_vocab_size": 31}, "noise_vocab_size"),
    ({"noise_vocab_size": 0}, "noise_vocab_size"),
    ({"train_targets": "some"}, "train_targets"),
    ({"num_train_examples": -5}, "num_train_examples"),
])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        create_task("noisy_recall", **options)
