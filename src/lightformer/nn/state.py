"""The decoding state of a mixer: what ``init_state``, ``step`` and ``forward(..., return_state=True)`` pass along.

A state is a value, not a buffer: ``step`` and ``forward`` return a new state and never change the one they were
given, so a caller may branch from any state (beam search, speculative decoding) without aliasing. Every state
reports its size, which the decode bench and the capacity suite's state-size accounting read, and can pick batch
rows (``select``), which reorders beams.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, TypeVar

import torch
from torch import Tensor

S = TypeVar("S", bound="State")


@dataclasses.dataclass(frozen=True)
class State:
    """Base of every decoding state (a frozen dataclass; subclasses add their tensors as fields).

    Attributes:
        length: tokens consumed so far (also the absolute position of the next token).
    """

    length: int

    def tensors(self) -> Iterator[Tensor]:
        """The tensors this state holds (its fields that are tensors, ``None`` fields skipped)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                yield value

    def nbytes(self) -> int:
        """Bytes of the tensors the state needs (for a cache: the kept tokens, not spare capacity)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def select(self: S, index: Tensor) -> S:
        """The state of batch rows ``index`` (``[B']`` int64, repeats allowed): every tensor field indexed on its
        first (batch) dimension. Raises ``ValueError`` for an index that is not a 1-D integer tensor."""
        check_index(index)
        changes = {f.name: getattr(self, f.name).index_select(0, index.to(getattr(self, f.name).device))
                   for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return dataclasses.replace(self, **changes)


def check_index(index: Tensor) -> None:
    if not isinstance(index, Tensor) or index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index must be a 1-D integer tensor of batch rows, got {index!r}")
