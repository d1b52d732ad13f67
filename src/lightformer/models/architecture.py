"""Architectures: a registered mixer or a schedule preset, named as one thing so that suites, compares, reports and
``advise`` can set a hybrid (``masformer``, ``mamba_hybrid``) beside single mixers.

``architecture_capabilities(name)`` is the meet of the capabilities of the mixers a name uses: a stack is causal,
decodes or takes a padding mask only when every layer does; it is exact only when every layer is; its time grows as
the worst layer's; its positions are the ones every layer accepts; its ``max_len`` is the smallest.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from ..mixers.base import MIXERS, Capabilities
from .schedule import SCHEDULE_PRESETS, expand_preset, parse_schedule


def is_architecture(name: str) -> bool:
    """Whether ``name`` is a registered mixer or a schedule preset."""
    return name in MIXERS or name in SCHEDULE_PRESETS


def architecture_mixers(name: str, num_layers: int = 4) -> tuple[str, ...]:
    """The distinct mixers ``name`` uses (itself, for a mixer), in order of first use.

    Raises:
        ValueError: ``name`` is neither a mixer nor a schedule preset."""
    if name in MIXERS:
        return (name,)
    if name not in SCHEDULE_PRESETS:
        raise ValueError(f"{name!r} is neither a registered mixer nor a schedule preset "
                         f"({', '.join(SCHEDULE_PRESETS)})")
    from ..blocks import BLOCKS, FFNS, NORMS  # noqa: F401  (a schedule's parts may name blocks and FFNs)

    seen: list[str] = []
    for clause in parse_schedule(expand_preset(name, num_layers)):
        for spec in clause.specs:
            for part in spec:
                if part.name in MIXERS and part.name not in seen:
                    seen.append(part.name)
    return tuple(seen)


def base_mixer(name: str) -> str:
    """The mixer of a preset's base clause, the one every layer has unless an override changes it (the most used in
    a repeated group, the first among equals): ``sliding_window`` for ``masformer``, ``mamba2`` for
    ``mamba_hybrid``; ``name`` itself for a mixer. Layers that name it inherit ``ModelConfig.mixer_options`` when it
    is also ``ModelConfig.mixer`` (``models/schedule.py``), so options sized for it (a sliding window) reach those
    layers at any depth; the preset's other mixers keep their defaults.

    Raises:
        ValueError: ``name`` is neither a mixer nor a schedule preset."""
    if name in MIXERS:
        return name
    used = architecture_mixers(name)  # raises for an unknown name
    for clause in parse_schedule(expand_preset(name, 4)):
        if clause.layers is None:
            names = [part.name for spec in clause.specs for part in spec if part.name in MIXERS]
            if names:
                return max(dict.fromkeys(names), key=names.count)
    return used[0]


def meet(capabilities: Iterable[Capabilities]) -> Capabilities:
    """The capabilities a stack of layers with these mixers' capabilities has (see the module docstring)."""
    caps = list(capabilities)
    if len(caps) == 1:
        return caps[0]
    worst = max(caps, key=lambda c: (c.time_exponent, c.log_exponent))
    limits = [c.max_len for c in caps if c.max_len is not None]
    return dataclasses.replace(
        caps[0], exact=all(c.exact for c in caps), causal=all(c.causal for c in caps),
        padding_mask=all(c.padding_mask for c in caps), decode=all(c.decode for c in caps),
        prefill=all(c.prefill for c in caps), non_causal=all(c.non_causal for c in caps),
        complexity=" + ".join(dict.fromkeys(c.complexity for c in caps)),
        max_len=min(limits) if limits else None,
        positions=frozenset.intersection(*(frozenset(c.positions) for c in caps)),
        time_exponent=worst.time_exponent, log_exponent=worst.log_exponent,
        compile=next((c.compile for c in caps if c.compile), None))


def architecture_capabilities(name: str) -> Capabilities:
    """``MIXERS.get(name).capabilities`` for a mixer; the meet over its mixers for a schedule preset."""
    return meet(MIXERS.get(m).capabilities for m in architecture_mixers(name))


def model_fields(name: str) -> dict[str, str]:
    """The ``ModelConfig`` fields that select architecture ``name``: ``{"mixer": name}`` for a mixer,
    ``{"schedule": name}`` for a preset (whose clauses name every layer's mixer)."""
    if name in MIXERS:
        return {"mixer": name}
    architecture_mixers(name)  # raises for an unknown name
    return {"schedule": name}
