"""``train.compile``: the training forward through ``torch.compile``, refused for mixers that declare they cannot."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def compile_for_training(model: nn.Module, config: Any) -> nn.Module:
    """``torch.compile(model)`` (default inductor backend, graph breaks allowed), sharing ``model``'s parameters.

    The trainer runs its training forward (and so the backward) through the result; evaluation, checkpoints and
    the optimizer keep ``model`` itself, whose state-dict keys the compiled wrapper would prefix.

    Args:
        model: the task's model; config: its ``ModelConfig`` (``config.mixers``: the mixer of each layer).

    Raises:
        ValueError: a layer's mixer declares in ``capabilities.compile`` why it cannot be compiled (the message
            names ``train.compile``, the mixer and the reason).
    """
    from ..mixers import MIXERS

    for name in dict.fromkeys(config.mixers):
        reason = MIXERS.get(name).capabilities.compile
        if reason:
            raise ValueError(f"train.compile=true: mixer {name!r} cannot be compiled ({reason}); train it without "
                             "--compile")
    return torch.compile(model)
