"""The peer adapter type shared by every peer module of this package."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from ..defaults import BENCH_DEFAULTS

#: The peer every row of a report is compared with, whatever its mixer.
SDPA = "sdpa"


def opt(options: dict[str, Any], mixer: str, name: str) -> Any:
    """The bench option ``name`` of ``mixer``: the cell's value, else the bench default of that mixer."""
    return options.get(name, BENCH_DEFAULTS.get(mixer, {}).get(name))


@dataclass(frozen=True)
class Peer:
    """A peer adapter.

    Attributes:
        name: peer name (the ``impl`` of its bench cells).
        package: import name checked for availability; pip: the pip requirement to suggest.
        mixer: the lightformer mixer it is the baseline for.
        build: ``(options, seq_len, dim, heads, causal) -> nn.Module`` mapping ``[B, T, D] -> [B, T, D]``.
        unsupported: ``(options, seq_len, dim, heads, causal) -> reason or None``.
    """

    name: str
    package: str
    pip: str
    mixer: str
    build: Callable[..., Any]
    unsupported: Callable[..., str | None] = lambda *a: None

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def unavailable_reason(self) -> str:
        return f"package {self.package!r} is not installed: pip install {self.pip} (or lightformer[peers])"
