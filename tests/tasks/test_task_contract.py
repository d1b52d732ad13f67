"""The registry-wide task contract: every registered task is checked here by being registered.

For each task (built with its ``example_options``): the batch layout its kind promises (shapes, dtypes, ranges);
determinism per task seed; splits that differ; a different draw for a different ``seed``; a task seed that changes
the data; ``format_example`` prints; and one training step of the model the task builds gives a finite loss whose
gradient reaches every parameter, with metrics in their range.
"""

from __future__ import annotations

import pytest
import torch

from lightformer import ModelConfig
from lightformer.tasks import IGNORE, KINDS, SPLITS, TASKS, create_task, direction

NAMES = TASKS.names()
N = 4


def build(name: str, **extra):
    try:
        return create_task(name, **{**TASKS.get(name).example_options, **extra})
    except FileNotFoundError as e:  # a loader whose data is not installed on this machine
        pytest.skip(f"{name}: {e}")


def flat(batch) -> list[torch.Tensor]:
    out = []
    for b in batch:
        out += flat(b) if isinstance(b, tuple) else [b]
    return out


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(flat(a), flat(b)))


@pytest.mark.parametrize("name", NAMES)
def test_layout(name):
    task = build(name)
    assert task.kind in KINDS
    for m in task.metrics:
        assert direction(m) in ("min", "max")
    for split in SPLITS:
        batch = task.sample(split, N)
        if task.kind in ("lm", "sequence"):
            x, y = batch
            assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[0] == N
            assert x.shape[1] <= task.seq_len
            assert 0 <= int(x.min()) and int(x.max()) < task.vocab_size
            scored = y != IGNORE
            assert scored.any(), "every batch scores something"
            assert 0 <= int(y[scored].min()) and int(y[scored].max()) < task.vocab_size
        elif task.kind == "classify":
            x, mask, labels = batch
            assert x.dtype == torch.int64 and mask.dtype == torch.bool and labels.dtype == torch.int64
            assert x.shape == mask.shape and x.shape[0] == N and labels.shape == (N,)
            assert x.shape[1] <= task.seq_len and mask.any(dim=1).all()
            assert 0 <= int(x.min()) and int(x.max()) < task.vocab_size
            assert 0 <= int(labels.min()) and int(labels.max()) < task.num_classes
        elif task.kind == "pair":
            (a, ma), (b, mb), labels = batch
            for x, mask in ((a, ma), (b, mb)):
                assert x.dtype == torch.int64 and mask.dtype == torch.bool and x.shape == mask.shape
                assert x.shape[0] == N and x.shape[1] <= task.seq_len and mask.any(dim=1).all()
                assert 0 <= int(x.min()) and int(x.max()) < task.vocab_size
            assert labels.shape == (N,) and set(labels.tolist()) <= set(range(task.num_classes))
        else:
            x, y, scored = batch
            assert x.dtype == y.dtype == torch.float32 and scored.dtype == torch.bool
            assert x.shape[:2] == y.shape == scored.shape and x.shape[0] == N and scored.any()
            assert torch.isfinite(x).all() and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_splits_differ(name):
    task, again = build(name), build(name)
    draws = {split: task.sample(split, N) for split in SPLITS}
    for split in SPLITS:
        assert same(draws[split], again.sample(split, N)), f"{split}: same task seed, same data"
    assert not same(draws["train"], draws["val"]) and not same(draws["val"], draws["test"])
    assert not same(task.sample("train", N, seed=1), task.sample("train", N, seed=2))
    assert same(task.sample("train", N, seed=5), again.sample("train", N, seed=5))
    other = build(name, seed=task.config.seed + 1)
    assert not same(other.sample("train", N, seed=3), task.sample("train", N, seed=3)), "the task seed matters"


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_are_named(name):
    task = build(name)
    with pytest.raises(ValueError, match="split"):
        task.sample("dev", 2)
    with pytest.raises(ValueError, match="n must"):
        task.sample("train", 0)
    with pytest.raises(TypeError, match="no_such_option"):
        create_task(name, no_such_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_format_example(name):
    task = build(name)
    text = task.format_example(task.sample("val", 2), 1)
    assert isinstance(text, str) and len(text) > 10


@pytest.mark.parametrize("name", NAMES)
def test_model_trains_one_step(name):
    task = build(name)
    torch.manual_seed(0)
    model = task.build_model(ModelConfig(dim=32, num_layers=1, num_heads=2, max_len=8, position="none"))
    batch = task.sample("train", N, seed=0)
    out = task.loss(model, batch)
    assert torch.isfinite(out.loss) and out.count > 0
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # the token table of a real-valued task and the positions of a "none" scheme are the only unused ones
    assert all("embed" in n for n in missing), missing
    for metric, total in out.sums.items():
        value = total / out.count
        assert value == value  # not NaN
        if metric == "accuracy":
            assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_count_read_from_the_batch_is_the_loss_count(name):
    """``task.count(batch)``, which multi-process training all-reduces before the forward, is the number of units
    ``task.loss`` scores, on the training split (where probes may score fewer positions) and on validation."""
    task = build(name)
    torch.manual_seed(0)
    model = task.build_model(ModelConfig(dim=32, num_layers=1, num_heads=2, max_len=8, position="none"))
    for split, seed in (("train", 0), ("train", 1), ("val", None)):
        batch = task.sample(split, N, seed=seed)
        count = task.count(batch)
        assert isinstance(count, int) and count == task.loss(model, batch).count > 0, (split, seed)
