"""Parsing of human sizes: ``2GiB``, ``512MiB``, ``1.5G``, ``300M``, ``4096`` (bare numbers are MiB)."""

from __future__ import annotations

import re

_UNITS_MIB = {
    "": 1.0, "b": 1 / 2**20,
    "k": 1 / 1024, "kb": 1000 / 2**20, "kib": 1 / 1024,
    "m": 1.0, "mb": 1e6 / 2**20, "mib": 1.0,
    "g": 1024.0, "gb": 1e9 / 2**20, "gib": 1024.0,
    "t": 1024.0**2, "tb": 1e12 / 2**20, "tib": 1024.0**2,
}


def parse_size_mib(text: str | int | float) -> float:
    """A size in MiB. ``K/M/G/T`` and ``KiB/MiB/GiB/TiB`` are binary (1G = 1024 MiB), ``KB/MB/GB/TB`` decimal;
    a bare number is MiB.

    Raises:
        ValueError: unparseable text or a negative size.
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
        if not match or match.group(2).lower() not in _UNITS_MIB:
            raise ValueError(f"cannot parse size {text!r}; use e.g. 2GiB, 512MiB, 1.5G or a number of MiB")
        value = float(match.group(1)) * _UNITS_MIB[match.group(2).lower()]
    if value < 0:
        raise ValueError(f"size must be non-negative, got {text!r}")
    return value
