"""Evaluation of any task's model: the task's metrics over a fixed set of one split, without an optimizer."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..tasks.base import Task, batch_to
from .distributed import SINGLE, Distributed


def autocast_context(device: torch.device | str, bf16: bool) -> Any:
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "val", *, n: int, batch_size: int, bf16: bool = False,
             device: torch.device | str = "cpu", dist: Distributed = SINGLE) -> dict[str, float]:
    """Every metric of ``task`` on ``task.sample(split, n)`` (its canonical set), in chunks of ``batch_size``.

    With several ranks (``dist``), rank r evaluates chunks r, r + W, r + 2W, ... and the sums are gathered, so the
    set is evaluated once, not once per rank, and every rank returns the same numbers. ``model`` is the plain
    module, not its ``DistributedDataParallel`` wrapper (whose forward every rank would have to join).

    Returns:
        ``{metric: value}`` for each of ``task.metrics`` (e.g. ``{"accuracy": 0.97, "loss": 0.11}``; ``bpc`` in
        bits per token, ``loss`` in nats per scored unit), plus ``"count"``: the scored units.

    Raises:
        ValueError: a bad ``split`` or a non-positive ``n``/``batch_size``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        data = task.sample(split, n)
        sums: dict[str, float] = {}
        count = 0
        for start in range(dist.rank * batch_size, n, dist.world_size * batch_size):
            batch = batch_to(_slice(data, start, start + batch_size), device)
            with autocast_context(device, bf16):
                out = task.loss(model, batch)
            count += out.count
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0.0) + v
    finally:
        model.train(was_training)
    if dist.parallel:  # added in rank order, so every rank (and every run of this world size) gets the same sums
        shares, count, sums = dist.all_gather((count, sums)), 0, {}
        for c, s in shares:
            count += c
            for k, v in s.items():
                sums[k] = sums.get(k, 0.0) + v
    return {**{k: v / count for k, v in sums.items()}, "count": count}


def _slice(batch: tuple, start: int, stop: int) -> tuple:
    return tuple(_slice(b, start, stop) if isinstance(b, tuple) else b[start:stop] for b in batch)
