"""ListOps: hierarchical list operations over digits, LRA's long-sequence version (a seeded reimplementation).

Source: Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021, Sec. 3.1 and the
generator ``lra_benchmarks/data/listops.py`` of google-research/long-range-arena; the task itself is from Nangia &
Bowman, "ListOps: A Diagnostic Dataset for Latent Tree Learning", NAACL SRW 2018.

An example is a prefix expression such as ``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]``; the label is its value,
a digit (10 classes). The generator draws trees node by node (LRA's ``generate_tree``), here with these parameters
(LRA's defaults in brackets, all of them the defaults here):

- a node at depth ``< max_depth`` [10] is an operator with probability ``VALUE_P`` [0.25] (LRA: a leaf when
  ``random() > VALUE_P``), otherwise a leaf; a node at depth ``max_depth`` is always a leaf (the root is depth 1);
- a leaf is a digit uniform in 0..9; an operator is uniform in ``MIN, MAX, MED, SM`` (LRA's ``OPERATORS``; its
  ``FIRST``/``LAST`` are commented out) with ``randint(2, max_args)`` [10] children, both ends included;
- values: ``MIN``/``MAX`` of the children, ``MED`` = ``int(np.median(children))`` (the floor of the mean of the two
  middle values for an even count), ``SM`` = ``sum(children) % 10``;
- a tree's length is its token count without parentheses (an operator and its ``]`` count 2, a digit 1); a tree is
  kept only when ``min_length < length < max_length`` strictly [500, 2000] (rejection sampling);
- kept trees are de-duplicated; LRA writes 96,000 / 2,000 / 2,000 train / val / test trees.

Tokens are LRA's after its fixed input pipeline (commit ``c209b2a``, 2021-03): the operators ``[MIN [MAX [MED [SM``,
the closing ``]`` (LRA renames it ``X`` for its whitespace tokenizer) and the digits, with the ``(``/``)`` of LRA's
``to_string`` dropped. Vocabulary (16): ``<pad> [MIN [MAX [MED [SM ] 0 1 ... 9``.

Where this differs from LRA, and why:

- LRA's ``random`` is unseeded and its splits are slices of a Python ``set``'s iteration order, so its files cannot
  be regenerated. Here every draw comes from a seeded ``numpy.random.Generator`` and the order is fixed: each split's
  pool is drawn from its own stream (``task.rng(split, None)``), in the order test, val, train, each skipping every
  sequence already taken by an earlier split (the splits are disjoint and the evaluation sets do not change when
  ``num_train`` does).
- The trees are grown breadth first, a whole batch of roots at a time with numpy, and a tree is abandoned as soon as
  its length is certain to reach ``max_length`` (the tokens drawn so far plus one per pending child). Every node is
  still drawn independently with LRA's probabilities and every tree is kept or rejected by the same rule, so the kept
  trees have LRA's distribution; only the order in which random numbers are consumed differs. Measured on one
  core of the development machine: ~6,000-9,000 kept trees/s at LRA's lengths (the notes time LRA's recursion at
  ~250/s), so the default 100,000-tree pool takes ~15 s once and then loads from the cache in ~0.4 s.
- Batches are padded to their longest example (mask True = real token), not to ``max_length``: cheaper on a CPU.
  ``seq_len`` is ``max_length - 1``, the longest possible example.
- ``group_by_length=True`` (off by default; the suite's recipe turns it on) draws each training batch from one
  bucket of ``GROUP_BATCHES`` batches' worth of trees of neighbouring lengths (the bucket picked with probability
  proportional to its size, the trees without replacement inside it), so every tree is still drawn with probability
  ``n / num_train`` but a batch of 32 at LRA's lengths pads 0.2 % of its tokens instead of 45 % (measured over 200
  batches: padded to 1,059 tokens on average instead of 1,883). Validation and test batches are unchanged.

The pools are generated once per task and cached as ``.npz`` under ``cache_dir()`` (``$LIGHTFORMER_CACHE/tasks`` or
``~/.cache/lightformer/tasks``), named by the task's fingerprint and written atomically; pools of fewer than
``CACHE_MIN_TREES`` trees in all are cheaper to regenerate than to read and are not cached. The label distribution
is skewed towards 0 and 9 (``MIN``/``MAX`` of many digits), as in LRA.

Published accuracy (%), LRA Table 1 (the leaderboard "as of 8th November 2020"): Transformer 36.37, Local Attention
15.82, Sparse Transformer 17.07, Longformer 35.63, Linformer 35.70, Reformer 37.27, Sinkhorn Transformer 33.67,
Synthesizer 36.99, BigBird 36.05, Linear Transformer 16.13, Performer 18.01. (Whether those runs used the fixed
pipeline or the earlier one that dropped every bracket is unclear; see LRA issue #20.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from ._cache import atomic_savez, cache_dir
from .base import SPLITS, TASKS, ClassificationTask, TaskConfig, check_int

#: LRA's ``VALUE_P``: the probability that a node above ``max_depth`` is an operator.
VALUE_P = 0.25
OPERATORS = ("MIN", "MAX", "MED", "SM")
PAD, END = 0, 5
#: token id of operator ``k`` (index into ``OPERATORS``) is ``OP0 + k``; of digit ``v`` is ``DIGIT0 + v``
OP0, DIGIT0 = 1, 6
VOCAB = ("<pad>",) + tuple("[" + op for op in OPERATORS) + ("]",) + tuple(str(v) for v in range(10))
#: bumped whenever the generator's output for given options changes (it names the cache file)
GENERATOR_VERSION = 1
#: pools with fewer trees than this (all splits together) are not written to the disk cache
CACHE_MIN_TREES = 10_000
#: a ``group_by_length`` bucket holds this many batches' worth of training trees of neighbouring lengths
GROUP_BATCHES = 8
#: roots grown per numpy round (fixed, so a pool of m trees is the first m of any larger pool)
ROUND_ROOTS = 8192


@functools.lru_cache(maxsize=64)
def feasible(min_length: int, max_length: int, max_depth: int, max_args: int) -> bool:
    """Whether some tree of at most ``max_depth`` levels and ``2..max_args`` children per operator has a length
    strictly between ``min_length`` and ``max_length`` (an exact dynamic programme over reachable lengths, as
    bitsets; lengths >= ``max_length`` are dropped since every length is positive). Above ``max_length`` 100,000
    it answers True without checking (the generator's own guard then stops a hopeless search)."""
    if max_length > 100_000:
        return True
    cap = (1 << max_length) - 1
    wanted = cap & ~((1 << (min_length + 1)) - 1)
    reach = 1 << 1  # depth 1: a single digit
    for _ in range(1, max_depth):
        if reach & wanted:
            return True
        elements = [s for s in range(max_length) if reach >> s & 1]
        sums, total = reach, 0  # sums: lengths of j children, j = 1 ..
        for _ in range(2, max_args + 1):
            nxt = 0
            for s in elements:
                nxt |= sums << s
            sums = nxt & cap
            total |= sums
        grown = (reach | (total << 2)) & cap
        if grown == reach:
            break
        reach = grown
    return bool(reach & wanted)


def _grow(rng: np.random.Generator, roots: int, max_length: int, max_depth: int, max_args: int,
          value_p: float) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Grow ``roots`` trees breadth first. Returns the levels (per node: ``op`` bool, ``sym`` operator code or
    digit, ``nchild``, ``root``), each tree's length and whether it was grown completely (not abandoned)."""
    root = np.arange(roots)
    length = np.zeros(roots, np.int64)
    alive = np.ones(roots, bool)
    levels = []
    for depth in range(1, max_depth + 1):
        k = root.size
        if k == 0:
            break
        op = rng.random(k) <= value_p if depth < max_depth else np.zeros(k, bool)  # LRA: leaf iff r > VALUE_P
        # one integer per node gives its digit, operator and child count, independent and uniform
        u = rng.integers(0, 10 * len(OPERATORS) * (max_args - 1), k)
        digit, code, nchild = u % 10, u // 10 % len(OPERATORS), np.where(op, 2 + u // (10 * len(OPERATORS)), 0)
        length += np.bincount(root, weights=1 + op, minlength=roots).astype(np.int64)
        pending = np.bincount(root, weights=nchild, minlength=roots).astype(np.int64)
        alive &= length + pending < max_length  # every pending child adds at least one token
        levels.append({"op": op, "sym": np.where(op, code, digit), "nchild": nchild, "root": root})
        parents = np.flatnonzero(op & alive[root])
        root = np.repeat(root[parents], nchild[parents])
    return levels, length, alive


def _serialize(levels: list[dict[str, np.ndarray]], keep: np.ndarray, lengths: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept trees (``keep`` [roots] bool, each grown completely) as prefix token ids, concatenated in root
    order: ``(tokens uint8 [sum of lengths], offsets int64 [m + 1], labels int64 [m])``."""
    levels = [{key: v[keep[lv["root"]]] for key, v in lv.items()} for lv in levels]
    levels = [lv for lv in levels if lv["op"].size]
    # bottom-up: subtree sizes and values. The children of a level's operators are the next level's nodes, in
    # the order of their parents, so each operator's children form one contiguous segment.
    for upper, lower in zip(reversed(levels[:-1]), reversed(levels[1:])):
        lower.setdefault("size", 1 + lower["op"].astype(np.int64))
        lower.setdefault("value", lower["sym"])
        ops = np.flatnonzero(upper["op"])
        count = upper["nchild"][ops]
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])
        size = 1 + upper["op"].astype(np.int64)
        size[ops] += np.add.reduceat(lower["size"], starts)
        # per operator, how often each digit occurs among its children: every operator's value follows from it
        hist = np.bincount(np.repeat(np.arange(ops.size) * 10, count) + lower["value"],
                           minlength=ops.size * 10).reshape(ops.size, 10)
        below = np.cumsum(hist, axis=1)  # below[j, v] = children of operator j with value <= v
        present = hist > 0
        results = np.stack([
            present.argmax(1),  # MIN
            9 - present[:, ::-1].argmax(1),  # MAX
            ((below <= ((count - 1) // 2)[:, None]).sum(1) + (below <= (count // 2)[:, None]).sum(1)) // 2,  # MED
            hist @ np.arange(10) % 10,  # SM
        ])
        value = upper["sym"].copy()
        value[ops] = results[upper["sym"][ops], np.arange(ops.size)]
        upper["size"], upper["value"] = size, value
    top = levels[0]
    top.setdefault("size", 1 + top["op"].astype(np.int64))
    top.setdefault("value", top["sym"])
    assert np.array_equal(top["size"], lengths[keep])
    offsets = np.concatenate([[0], np.cumsum(top["size"])]).astype(np.int64)
    tokens = np.zeros(int(offsets[-1]), np.uint8)
    # top-down: the position of every node in the flat buffer
    top["pos"] = offsets[:-1]
    for upper, lower in zip(levels[:-1], levels[1:]):
        ops = np.flatnonzero(upper["op"])
        count = upper["nchild"][ops]
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])
        before = np.cumsum(lower["size"]) - lower["size"]  # sizes of all earlier nodes of the level
        lower["pos"] = np.repeat(upper["pos"][ops] + 1 - before[starts], count) + before
    for lv in levels:
        op, pos, sym = lv["op"], lv["pos"], lv["sym"]
        tokens[pos[op]] = OP0 + sym[op]
        tokens[pos[op] + lv["size"][op] - 1] = END
        tokens[pos[~op]] = DIGIT0 + sym[~op]
    return tokens, offsets, top["value"].astype(np.int64)


def tree_key(tokens: np.ndarray) -> bytes:
    """The identity of a token sequence for de-duplication: a 128-bit BLAKE2b digest of its uint8 ids (a chance
    collision, ~1e-29 per pair at LRA's pool size, is the only way two different trees could compare equal)."""
    return hashlib.blake2b(np.ascontiguousarray(tokens, np.uint8).tobytes(), digest_size=16).digest()


def generate_listops(rng: np.random.Generator, n: int, *, min_length: int = 500, max_length: int = 2000,
                     max_depth: int = 10, max_args: int = 10, value_p: float = VALUE_P,
                     exclude: set[bytes] | frozenset[bytes] = frozenset()
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` distinct ListOps trees drawn with ``rng`` (LRA's distribution; see the module docstring), none of them
    in ``exclude`` (``tree_key`` digests of token sequences; not modified).

    Returns:
        ``(tokens uint8 [total], offsets int64 [n + 1], labels int64 [n])``: tree ``i`` is
        ``tokens[offsets[i]:offsets[i + 1]]`` (ids into ``VOCAB``), its value ``labels[i]`` in 0..9. The order is
        the order of drawing, so it is fixed by the state of ``rng``.

    Raises:
        RuntimeError: the options admit too few distinct trees (50 rounds of ``ROUND_ROOTS`` roots in a row without
            a new one).
    """
    seen: set[bytes] = set()
    chunks, labels, lengths = [], [], []
    have, barren = 0, 0
    while have < n:
        levels, length, complete = _grow(rng, ROUND_ROOTS, max_length, max_depth, max_args, value_p)
        keep = complete & (length > min_length) & (length < max_length)
        found = 0
        if keep.any():
            tokens, offsets, values = _serialize(levels, keep, length)
            for i in range(values.size):
                tree = tokens[offsets[i]:offsets[i + 1]]
                key = tree_key(tree)
                if key in seen or key in exclude:
                    continue
                seen.add(key)
                chunks.append(tree)
                labels.append(values[i])
                lengths.append(tree.size)
                have += 1
                found += 1
                if have == n:
                    break
        barren = 0 if found else barren + 1
        if barren >= 50:
            raise RuntimeError(f"only {have} distinct ListOps trees of {n} found with min_length={min_length}, "
                               f"max_length={max_length}, max_depth={max_depth}, max_args={max_args}")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(chunks).astype(np.uint8), offsets, np.asarray(labels, np.int64)


@dataclass(frozen=True)
class ListOpsConfig(TaskConfig):
    """Options of ``listops`` (defaults = LRA's ``lra_benchmarks/data/listops.py`` flags).

    Attributes:
        min_length, max_length: kept trees have ``min_length < length < max_length`` tokens [500, 2000].
        max_depth: levels of a tree, the root being level 1 [10].
        max_args: the most children of an operator (at least 2) [10].
        num_train, num_val, num_test: pool sizes [96000, 2000, 2000].
        group_by_length: draw each training batch from trees of neighbouring lengths (not in LRA; the pools do not
            change, only which trees share a training batch; see the module docstring).
    """

    min_length: int = 500
    max_length: int = 2000
    max_depth: int = 10
    max_args: int = 10
    num_train: int = 96000
    num_val: int = 2000
    num_test: int = 2000
    group_by_length: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "min_length", low=0)
        check_int(self, "max_length", low=self.min_length + 2)
        check_int(self, "max_depth", low=1)
        check_int(self, "max_args", low=2)
        check_int(self, "num_train", "num_val", "num_test")
        if not isinstance(self.group_by_length, bool):
            raise ValueError(f"group_by_length must be a bool, got {self.group_by_length!r}")
        if not feasible(self.min_length, self.max_length, self.max_depth, self.max_args):
            raise ValueError(f"min_length={self.min_length}, max_length={self.max_length}: no tree with "
                             f"max_depth={self.max_depth}, max_args={self.max_args} has a length strictly between")


@TASKS.register("listops")
class ListOps(ClassificationTask):
    """LRA ListOps: prefix expressions over digits -> their value (10 classes). See the module docstring.

    ``sample(split, n)`` is the first ``n`` trees of the split's pool; ``sample(split, n, seed=k)`` is ``n``
    distinct trees of the pool drawn with ``rng(split, k)``. Returns ``inputs [n, T] int64`` (ids into ``vocab``,
    0 = padding), ``key_padding_mask [n, T] bool`` (True = real token) and ``labels [n] int64``, with ``T`` the
    longest example of the batch (``<= seq_len``).

    Raises:
        ValueError: ``n`` larger than the split's pool (``num_train``/``num_val``/``num_test``).
    """

    config_class = ListOpsConfig
    label_names = tuple(str(v) for v in range(10))
    example_options = {"min_length": 20, "max_length": 60, "num_train": 64, "num_val": 16, "num_test": 16}

    def __init__(self, config: ListOpsConfig) -> None:
        super().__init__(config)
        self._pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._length_order: np.ndarray | None = None  # the training pool's indices sorted by length

    @property
    def seq_len(self) -> int:
        return self.config.max_length - 1

    @property
    def vocab(self) -> tuple[str, ...]:
        return VOCAB

    def pool_size(self, split: str) -> int:
        return getattr(self.config, "num_" + split)

    # -- pools -------------------------------------------------------------------------------------------------
    def pool_options(self) -> dict:
        """The options that fix the pools (every option but ``group_by_length``): the cache's name and check."""
        options = dataclasses.asdict(self.config)
        del options["group_by_length"]
        return options

    def cache_path(self) -> pathlib.Path:
        digest = hashlib.sha256(json.dumps(self.pool_options(), sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / f"listops-v{GENERATOR_VERSION}-{digest}.npz"

    def pools(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every split's pool ``{split: (tokens uint8, offsets int64, labels int64)}``, from memory, the disk cache
        or the generator (in that order)."""
        if self._pools is None:
            cached = self.cache_path() if sum(map(self.pool_size, SPLITS)) >= CACHE_MIN_TREES else None
            self._pools = self._load(cached) if cached is not None and cached.exists() else None
            if self._pools is None:
                self._pools = self._generate()
                if cached is not None:
                    self._store(cached, self._pools)
        return self._pools

    def _generate(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        cfg = self.config
        taken: set[bytes] = set()
        pools = {}
        for split in ("test", "val", "train"):  # the evaluation sets first: they do not depend on num_train
            tokens, offsets, labels = generate_listops(
                self.rng(split, None), self.pool_size(split), min_length=cfg.min_length, max_length=cfg.max_length,
                max_depth=cfg.max_depth, max_args=cfg.max_args, exclude=taken)
            if split != "train":
                taken.update(tree_key(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:]))
            pools[split] = (tokens, offsets, labels)
        return {split: pools[split] for split in SPLITS}

    def _meta(self) -> str:
        return json.dumps({"version": GENERATOR_VERSION, **self.pool_options()}, sort_keys=True)

    def _load(self, path: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        try:
            with np.load(path) as data:
                if str(data["meta"]) != self._meta():
                    return None
                return {s: (data[f"{s}_tokens"], data[f"{s}_offsets"], data[f"{s}_labels"]) for s in SPLITS}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            # a damaged file: regenerate, and overwrite it
            warnings.warn(f"ignoring unreadable ListOps cache {path}: {e}", stacklevel=3)
            return None

    def _store(self, path: pathlib.Path, pools: dict) -> None:
        arrays = {f"{s}_{part}": a for s, pool in pools.items() for part, a in zip(("tokens", "offsets", "labels"),
                                                                                  pool)}
        try:
            atomic_savez(path, meta=np.asarray(self._meta()), **arrays)
        except OSError as e:  # a read-only home: the data is still right, only slower next time
            warnings.warn(f"could not write the ListOps cache {path}: {e}", stacklevel=3)

    # -- batches -----------------------------------------------------------------------------------------------
    def _sample(self, split: str, n: int, seed: int | None) -> tuple:
        size = self.pool_size(split)
        if n > size:
            raise ValueError(f"n={n} is more than the {split} pool holds (num_{split}={size})")
        tokens, offsets, labels = self.pools()[split]
        if seed is None:
            index = np.arange(n)
        elif split == "train" and self.config.group_by_length:
            index = self._grouped_draw(self.rng(split, seed), offsets, n)
        else:
            index = self.rng(split, seed).choice(size, n, replace=False)
        starts, lengths = offsets[index], offsets[index + 1] - offsets[index]
        mask = np.arange(int(lengths.max()))[None, :] < lengths[:, None]  # [n, T]
        inputs = np.zeros(mask.shape, np.int64)
        inputs[mask] = np.concatenate([tokens[a:a + b] for a, b in zip(starts, lengths)])
        return torch.from_numpy(inputs), torch.from_numpy(mask), torch.from_numpy(labels[index].copy())

    def _grouped_draw(self, rng: np.random.Generator, offsets: np.ndarray, n: int) -> np.ndarray:
        """``n`` distinct training trees of neighbouring lengths: the pool sorted by length is cut into
        ``m = max(1, N // (GROUP_BATCHES·n))`` buckets of nearly equal size (each ``>= n``), one bucket is picked
        with probability ``size / N`` and ``n`` of its trees without replacement, so each tree's chance is
        ``n / N``."""
        if self._length_order is None:
            self._length_order = np.argsort(np.diff(offsets), kind="stable")
        size = len(self._length_order)
        m = max(1, size // (GROUP_BATCHES * n))
        bounds = np.arange(m + 1) * size // m
        b = rng.choice(m, p=np.diff(bounds) / size)
        return rng.choice(self._length_order[bounds[b]:bounds[b + 1]], n, replace=False)
