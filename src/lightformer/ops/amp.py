"""Autocast helpers shared by the kernels."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Switch autocast off on ``device`` for the block: the kernels choose their dtypes themselves (bf16 GEMMs, fp32
    statistics and states). A device type torch has no autocast for (``meta``, some accelerators) has nothing to
    switch off, so the block runs as is instead of failing in ``torch.autocast``."""
    if not torch.amp.is_autocast_available(device.type):
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield
