"""``fuzzy_recall`` (MAD): an independent decoder parses the key/value motifs out of the inputs alone and re-derives
every scored target; motif lengths, distinct tokens, padding, the training pool, determinism, option errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightformer.tasks import IGNORE, create_task

SMALL = {"seq_len": 48, "num_train_examples": 40}


def parse(row: list[int], num_keys: int, pad: int) -> tuple[int, list[tuple[str, int, list[int]]]]:
    """Leading pad count and the runs of the rest: ``(kind, start, tokens)`` with kind "k" (key tokens) or "v"."""
    lead = 0
    while row[lead] == pad:
        lead += 1
    runs: list[tuple[str, int, list[int]]] = []
    for t in range(lead, len(row)):
        assert row[t] != pad, "pads only open a sequence"
        kind = "k" if row[t] < num_keys else "v"
        if runs and runs[-1][0] == kind:
            runs[-1][2].append(row[t])
        else:
            runs.append((kind, t, [row[t]]))
    return lead, runs


def expected(row: list[int], num_keys: int, pad: int) -> tuple[dict[int, int], int, list[tuple[list, list]]]:
    """From the inputs alone: {position: target} of the scored positions, the final answer token, and the
    (key, value) motifs of the sequence (the last one the probe, with its full value)."""
    T = len(row)
    lead, runs = parse(row, num_keys, pad)
    assert runs[0][0] == "k", "a sequence starts with a key"
    pairs = []  # (key, value, value_start) of complete pairs
    i = 0
    while i + 1 < len(runs):
        assert runs[i][0] == "k" and runs[i + 1][0] == "v"
        pairs.append((runs[i][2], runs[i + 1][2], runs[i + 1][1]))
        i += 2
    # the probe: the last key, whose value is cut by one token (the answer lies after the inputs)
    if i == len(runs) - 1:  # the probe's value is one token: only its key is visible
        probe_key, shown, value_start = runs[i][2], [], T
    else:
        probe_key, shown, value_start = pairs[-1][0], pairs[-1][1], pairs[-1][2]
        pairs.pop()
    seen: dict[tuple, list] = {}
    targets: dict[int, int] = {}
    for key, value, start in pairs:
        if tuple(key) in seen:
            assert value == seen[tuple(key)], "a key keeps its value within a sequence"
            for j, v in enumerate(value):
                targets[start - 1 + j] = v
        else:
            seen[tuple(key)] = value
    assert tuple(probe_key) in seen, "the probe asks a key shown before"
    answer = seen[tuple(probe_key)]
    assert shown == answer[:-1] and value_start - 1 + len(answer) - 1 == T - 1
    for j, v in enumerate(answer):
        targets[value_start - 1 + j] = v
    motifs = [(k, v) for k, v, _ in pairs] + [(probe_key, answer)]
    return targets, answer[-1], motifs


def check_batch(task, x: torch.Tensor, y: torch.Tensor, train_all: bool) -> list:
    nk, pad = task.num_keys, task.pad
    K, W = task.config.k_motif_size, task.config.v_motif_size
    motifs_all = []
    for row, tgt in zip(x.tolist(), y.tolist()):
        targets, last, motifs = expected(row, nk, pad)
        lead = parse(row, nk, pad)[0]
        assert lead < 2 * (K + W)
        if train_all:
            assert tgt[:-1] == row[1:] and tgt[-1] == last
        else:
            want = [targets.get(t, IGNORE) for t in range(len(row))]
            assert tgt == want
        for key, value in motifs:
            assert 1 <= len(key) <= K and 1 <= len(value) <= W
            assert len(set(key)) == len(key) and len(set(value)) == len(value), "motif tokens are distinct"
        motifs_all += motifs
    return motifs_all


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_targets_decode(split):
    task = create_task("fuzzy_recall", **SMALL)
    x, y = task.sample(split, 300)
    motifs = check_batch(task, x, y, train_all=False)
    assert {len(k) for k, _ in motifs} == {3}, "evaluation keys are always at the maximum motif size"
    assert {len(v) for _, v in motifs} == {1, 2, 3}
    assert int((y != IGNORE).sum()) >= 300  # the probe at least


def test_training_targets_all_and_probe():
    task = create_task("fuzzy_recall", **SMALL, train_targets="all")
    x, y = task.sample("train", 40)
    motifs = check_batch(task, x, y, train_all=True)
    lengths = [len(k) for k, _ in motifs]
    assert set(lengths) == {1, 2, 3} and 1.7 < np.mean(lengths) < 2.3
    probe = create_task("fuzzy_recall", **SMALL, train_targets="probe")
    xp, yp = probe.sample("train", 40)
    assert torch.equal(xp, x), "train_targets changes the targets only"
    check_batch(probe, xp, yp, train_all=False)


def test_default_vocabulary_layout():
    task = create_task("fuzzy_recall")
    assert task.seq_len == 128 and task.vocab_size == 16 and task.num_keys == 7 and task.pad == 15
    assert task.vocab[:7] == tuple(f"k{i}" for i in range(7)) and task.vocab[7] == "v0" and task.vocab[-1] == "pad"
    x, y = task.sample("test", 50)
    assert x.shape == (50, 128)
    check_batch(task, x, y, train_all=False)


def test_training_pool_is_fixed():
    task = create_task("fuzzy_recall", **SMALL)
    pool_x, _ = task.train_pool()
    assert pool_x.shape == (40, 48)
    x, _ = task.sample("train", 100)
    assert torch.equal(x[:40], torch.from_numpy(pool_x)) and torch.equal(x[40:80], x[:40])  # cycles in order
    rows = {tuple(r) for r in pool_x.tolist()}
    drawn = task.sample("train", 25, seed=7)[0]
    assert all(tuple(r) in rows for r in drawn.tolist())
    assert len({tuple(r) for r in drawn.tolist()}) == 25  # without replacement when n <= pool
    fresh = create_task("fuzzy_recall", **{**SMALL, "num_train_examples": 0})
    assert not torch.equal(fresh.sample("train", 8, seed=1)[0], fresh.sample("train", 8, seed=2)[0])
    with pytest.raises(ValueError, match="num_train_examples=0"):
        fresh.train_pool()


def test_deterministic():
    a, b = create_task("fuzzy_recall", **SMALL), create_task("fuzzy_recall", **SMALL)
    for split in ("train", "val", "test"):
        assert all(torch.equal(u, v) for u, v in zip(a.sample(split, 20, seed=3), b.sample(split, 20, seed=3)))
    assert not torch.equal(a.sample("val", 20)[0], a.sample("test", 20)[0])


@pytest.mark.parametrize("options, name", [
    ({"vocab_size": 6}, "k_motif_size"),  # 2 key tokens cannot make a 3-token motif
    ({"vocab_size": 8, "v_motif_size": 5}, "v_motif_size"),
    ({"seq_len": 10}, "seq_len"),  # 11 < 2·(3+3)
    ({"vocab_size": 2}, "vocab_size"),
    ({"k_motif_size": 0}, "k_motif_size"),
    ({"num_train_examples": -1}, "num_train_examples"),
    ({"train_targets": "lm"}, "train_targets"),
    ({"seq_len": 32.0}, "seq_len"),
])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        create_task("fuzzy_recall", **options)
