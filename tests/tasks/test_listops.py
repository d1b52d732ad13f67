"""ListOps (LRA): every label re-computed by an independent stack machine over the token strings; lengths, depth and
arity within the options; the generator's distribution against a plain recursive sampler written here from LRA's
description; disjoint, de-duplicated splits; determinism; the disk cache; option errors."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch

from lightformer.tasks import create_task
from lightformer.tasks import listops as lo

SMALL = dict(min_length=20, max_length=60, num_train=300, num_val=50, num_test=50)


def evaluate(tokens: list[str], max_args: int = 10) -> tuple[int, int]:
    """The value and depth of a prefix expression, by a stack machine; asserts it is well formed."""
    frames: list[tuple[str, list[int]]] = [("top", [])]
    depth = 0
    for t in tokens:
        if t.startswith("["):
            frames.append((t[1:], []))
            depth = max(depth, len(frames) - 1)
        elif t == "]":
            op, args = frames.pop()
            assert op != "top" and 2 <= len(args) <= max_args, (op, args)
            if op == "MIN":
                v = min(args)
            elif op == "MAX":
                v = max(args)
            elif op == "MED":
                v = int(statistics.median(args))
            else:
                assert op == "SM", op
                v = sum(args) % 10
            frames[-1][1].append(v)
        else:
            assert t in "0123456789" and len(t) == 1, t
            frames[-1][1].append(int(t))
            depth = max(depth, len(frames))
    assert len(frames) == 1 and len(frames[0][1]) == 1, "one complete expression"
    return frames[0][1][0], max(depth, 1)


def strings(task, inputs: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    return [[task.vocab[int(t)] for t in row[m]] for row, m in zip(inputs, mask)]


def test_evaluator_on_hand_examples():
    assert evaluate("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]".split()) == (5, 3)
    assert evaluate("[MED 1 2 3 4 ]".split()) == (2, 2)  # int(2.5)
    assert evaluate("[SM 9 8 [MIN 7 7 ] ]".split()) == (4, 3)
    assert evaluate(["7"]) == (7, 1)


@pytest.mark.parametrize("options", [SMALL, dict(SMALL, max_depth=4, max_args=3, min_length=8, max_length=30)])
def test_every_label_recomputed(options):
    task = create_task("listops", **options)
    for split in ("train", "val", "test"):
        n = task.pool_size(split)
        inputs, mask, labels = task.sample(split, n)
        lengths = mask.sum(1)
        assert inputs.shape[1] == int(lengths.max()) <= task.seq_len == options["max_length"] - 1
        assert torch.equal(mask, inputs != 0) and bool((inputs[~mask] == 0).all())
        assert bool((lengths > options["min_length"]).all()) and bool((lengths < options["max_length"]).all())
        for seq, label in zip(strings(task, inputs, mask), labels.tolist()):
            value, depth = evaluate(seq, task.config.max_args)
            assert value == label and depth <= task.config.max_depth


def test_lra_lengths():
    # LRA's own setting: 500 < length < 2000, depth 10, 10 arguments
    tokens, offsets, labels = lo.generate_listops(np.random.default_rng(3), 200)
    lengths = np.diff(offsets)
    assert lengths.min() > 500 and lengths.max() < 2000 and offsets[-1] == tokens.size
    for i in range(200):
        seq = [lo.VOCAB[t] for t in tokens[offsets[i]:offsets[i + 1]]]
        assert evaluate(seq)[0] == labels[i]


class _TooLong(Exception):
    pass


def reference_tree(rnd: random.Random, depth: int, out: list[str], limit: int, max_depth=10, max_args=10):
    """LRA's generate_tree as the notes describe it, depth first with Python's random; it stops (rejects) a tree as
    soon as it reaches ``limit`` tokens."""
    r = rnd.random() if depth < max_depth else 1.0
    if r > 0.25:
        out.append(str(rnd.randrange(10)))
    else:
        k = rnd.randint(2, max_args)
        out.append("[" + rnd.choice(("MIN", "MAX", "MED", "SM")))
        for _ in range(k):
            reference_tree(rnd, depth + 1, out, limit, max_depth, max_args)
        out.append("]")
    if len(out) >= limit:
        raise _TooLong


def reference_sample(n: int, low: int, high: int, seed: int) -> list[list[str]]:
    """The first ``n`` distinct kept trees (LRA de-duplicates too)."""
    rnd, kept, seen = random.Random(seed), [], set()
    while len(kept) < n:
        out: list[str] = []
        try:
            reference_tree(rnd, 1, out, high)
        except _TooLong:
            continue
        if low < len(out) < high and tuple(out) not in seen:
            seen.add(tuple(out))
            kept.append(out)
    return kept


def root_arity(seq: list[str]) -> int:
    """Children of the root operator (0 for a digit)."""
    level, count = 0, 0
    for t in seq:
        if level == 1 and t != "]":
            count += 1
        level += 1 if t.startswith("[") else -1 if t == "]" else 0
    return count


def stats(seqs: list[list[str]]) -> dict[str, np.ndarray]:
    value_depth = np.array([evaluate(s) for s in seqs])
    return {"length": np.array([len(s) for s in seqs], float),
            "depth": value_depth[:, 1].astype(float),
            "operators": np.array([sum(t.startswith("[") for t in s) / len(s) for s in seqs]),
            "arity": np.array([root_arity(s) for s in seqs], float),
            "label": np.eye(10)[value_depth[:, 0]],
            "root": np.array([[s[0] == "[" + op for op in lo.OPERATORS] for s in seqs], float)}


@pytest.mark.parametrize("low, high, n_ours, n_ref", [(0, 200, 4000, 4000), (20, 60, 4000, 800),
                                                         (500, 2000, 800, 250)])
def test_distribution_matches_recursive_reference(low, high, n_ours, n_ref):
    tokens, offsets, _ = lo.generate_listops(np.random.default_rng(11), n_ours, min_length=low, max_length=high)
    ours = stats([[lo.VOCAB[t] for t in tokens[a:b]] for a, b in zip(offsets[:-1], offsets[1:])])
    ref = stats(reference_sample(n_ref, low, high, seed=5))
    for name in ours:
        a, b = ours[name], ref[name]
        diff = a.mean(0) - b.mean(0)
        # two-sample standard error per statistic, from the pooled spread
        se = np.sqrt(np.concatenate([a, b]).var(0) * (1 / len(a) + 1 / len(b)))
        assert np.all(np.abs(diff) <= 4.5 * se + 1e-12), (name, diff, se)
    # LRA's skew towards 0 and 9: each about 1/6 of the labels (notes: 49/300 each with LRA's own code)
    assert 0.12 < ours["label"][:, 0].mean() < 0.22 and 0.12 < ours["label"][:, 9].mean() < 0.22


def test_splits_disjoint_and_deduplicated():
    # short trees, so that a naive generator would repeat many of them
    task = create_task("listops", min_length=3, max_length=8, num_train=1500, num_val=400, num_test=400)
    seen: dict[tuple[int, ...], str] = {}
    for split in ("train", "val", "test"):
        inputs, mask, _ = task.sample(split, task.pool_size(split))
        for row, m in zip(inputs, mask):
            key = tuple(row[m].tolist())
            assert key not in seen, f"{split} repeats a sequence of {seen.get(key)}"
            seen[key] = split
    assert len(seen) == 2300


def test_too_few_distinct_trees():
    task = create_task("listops", min_length=0, max_length=2, num_train=20, num_val=2, num_test=2)  # digits only
    with pytest.raises(RuntimeError, match="distinct"):
        task.sample("train", 1)


def test_deterministic_prefix_and_draws():
    a, b = create_task("listops", **SMALL), create_task("listops", **SMALL)
    for split in ("train", "val", "test"):
        for x, y in zip(a.sample(split, 40), b.sample(split, 40)):
            assert torch.equal(x, y)
    # a smaller train pool is the start of a larger one; the evaluation pools do not depend on num_train
    c = create_task("listops", **dict(SMALL, num_train=100))
    first_c, first_a = c.sample("train", 100), a.sample("train", 100)
    assert all(torch.equal(x, y) for x, y in zip(first_c, first_a))
    assert all(torch.equal(x, y) for x, y in zip(c.sample("test", 50), a.sample("test", 50)))
    # seeded draws: distinct pool members, repeatable
    inputs, mask, labels = a.sample("train", 64, seed=7)
    again = a.sample("train", 64, seed=7)
    assert all(torch.equal(x, y) for x, y in zip((inputs, mask, labels), again))
    pool = {tuple(r[m].tolist()) for r, m in zip(*a.sample("train", 300)[:2])}
    drawn = [tuple(r[m].tolist()) for r, m in zip(inputs, mask)]
    assert len(set(drawn)) == 64 and set(drawn) <= pool
    other = create_task("listops", **dict(SMALL, seed=1))
    assert not torch.equal(other.sample("val", 10)[2], a.sample("val", 10)[2]) or \
        not torch.equal(other.sample("val", 10)[0], a.sample("val", 10)[0])


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr(lo, "CACHE_MIN_TREES", 100)
    task = create_task("listops", **SMALL)
    first = task.sample("val", 50)
    path = task.cache_path()
    assert path.parent == tmp_path / "tasks" and path.exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left behind"

    def no_generation(self):
        raise AssertionError("the cache was not used")

    with monkeypatch.context() as m:
        m.setattr(lo.ListOps, "_generate", no_generation)
        hit = create_task("listops", **SMALL)
        assert all(torch.equal(x, y) for x, y in zip(first, hit.sample("val", 50)))
        assert all(torch.equal(x, y) for x, y in zip(task.sample("train", 30, seed=2), hit.sample("train", 30, seed=2)))
    # a damaged file is regenerated (same data) and rewritten
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        fixed = create_task("listops", **SMALL).sample("val", 50)
    assert all(torch.equal(x, y) for x, y in zip(first, fixed))
    assert path.stat().st_size > 1000
    # below the threshold nothing is written
    monkeypatch.setattr(lo, "CACHE_MIN_TREES", 10_000)
    small = create_task("listops", **dict(SMALL, seed=3))
    small.sample("val", 5)
    assert not small.cache_path().exists()


def test_group_by_length(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr(lo, "CACHE_MIN_TREES", 100)
    options = dict(SMALL, min_length=20, max_length=400, num_train=2000)
    plain, grouped = create_task("listops", **options), create_task("listops", **options, group_by_length=True)
    # the same pools, from the same cache file; evaluation batches and unseeded draws unchanged
    assert grouped.cache_path() == plain.cache_path()
    for split, seed in (("train", None), ("val", None), ("val", 3), ("test", 5)):
        assert all(torch.equal(x, y) for x, y in zip(plain.sample(split, 40, seed=seed),
                                                     grouped.sample(split, 40, seed=seed)))
    lengths = {tuple(r[m].tolist()): int(m.sum()) for r, m in zip(*plain.sample("train", 2000)[:2])}
    order = sorted(lengths.values())
    counts: dict[tuple[int, ...], int] = {}
    for k in range(2000):
        inputs, mask, labels = grouped.sample("train", 25, seed=k)
        drawn = [tuple(r[m].tolist()) for r, m in zip(inputs, mask)]
        assert len(set(drawn)) == 25 and set(drawn) <= lengths.keys()
        for row in drawn:
            counts[row] = counts.get(row, 0) + 1
        # one bucket of GROUP_BATCHES·n = 200 neighbouring lengths of the sorted pool (10 buckets)
        b = order.index(min(lengths[r] for r in drawn)) // 200
        assert max(lengths[r] for r in drawn) <= order[min(len(order), 200 * (b + 2)) - 1]
        assert mask.shape[1] == max(lengths[r] for r in drawn)
    assert all(torch.equal(x, y) for x, y in zip(grouped.sample("train", 25, seed=9),
                                                 grouped.sample("train", 25, seed=9)))
    # every tree is drawn with chance n / N = 1/80 per batch: 25 times in 2000 batches (binomial sd ~4.9)
    assert len(counts) == 2000
    values = np.array(list(counts.values()))
    assert abs(values.mean() - 25) < 1e-9 and 3.5 < values.std() < 6.5 and values.min() >= 3


def test_vocab_and_example():
    task = create_task("listops", **SMALL)
    assert task.vocab[0] == "<pad>" and task.vocab_size == 16 and task.num_classes == 10
    assert set(task.vocab[1:6]) == {"[MIN", "[MAX", "[MED", "[SM", "]"}
    text = task.format_example(task.sample("val", 3), 2)
    assert text.startswith("label  : ") and "[" in text


@pytest.mark.parametrize("option, value", [
    ("min_length", -1), ("max_length", 21), ("max_depth", 0), ("max_args", 1), ("num_train", 0),
    ("num_val", 1.5), ("num_test", True), ("seed", -2), ("group_by_length", 1)])
def test_option_errors(option, value):
    with pytest.raises(ValueError, match=option):
        create_task("listops", **dict(SMALL, **{option: value}))


def test_infeasible_lengths():
    with pytest.raises(ValueError, match="min_length"):
        create_task("listops", min_length=1, max_length=4)  # lengths 2 and 3 do not exist
    with pytest.raises(ValueError, match="min_length"):
        create_task("listops", min_length=4, max_length=7, max_args=2)  # binary trees: length = 1 mod 3
    with pytest.raises(ValueError, match="min_length"):
        create_task("listops", min_length=12, max_length=20, max_depth=2)  # at most 2 + 10 tokens
    assert lo.feasible(6, 8, 10, 2) and not lo.feasible(7, 10, 10, 2)
    assert math.isclose(lo.VALUE_P, 0.25)


def test_n_larger_than_pool():
    task = create_task("listops", **SMALL)
    with pytest.raises(ValueError, match="num_val"):
        task.sample("val", 51)
