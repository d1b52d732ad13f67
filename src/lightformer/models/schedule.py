"""Per-layer schedules: a compact syntax that gives each layer of a model its own mixer (and block, FFN, norm).

Syntax (whitespace is free)::

    schedule := clause (";" clause)*
    clause   := base | override
    base     := spec | "(" spec spec* ")" "*"          -- every layer; a group repeats cyclically over the depth
    override := spec "@" index ("," index)*            -- those layers (0-based; negative counts from the top)
    spec     := part ("/" part)*                       -- e.g. mamba2/swiglu or softmax(window=64)/post_norm
    part     := name [ "(" key=value ("," key=value)* ")" ]   -- values are TOML literals: 64, 0.5, true, "x", [1, 2]

Each part is looked up in the mixer, block, FFN and norm registries (their names do not overlap) and sets that
field of the layer; fields a spec leaves out keep the model's (``ModelConfig.mixer``, ``block``, ``ffn``, ``norm``
and their options). A part without options inherits the model's options only when it names the model's own
choice; a different name starts from its defaults. At most one base clause; overrides apply in order, later ones
win. Examples, for 8 layers::

    "sliding_window; softmax@0,6"           exact attention at layers 0 and 6, sliding_window elsewhere
    "(mamba2 mamba2 mamba2 softmax)*"      mamba2, mamba2, mamba2, softmax, mamba2, mamba2, mamba2, softmax
    "softmax/swiglu; mamba/moe(num_experts=8)@1,3,5,7"

A schedule may also be the name of a preset (``SCHEDULE_PRESETS``), which expands with the model's depth.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, replace
from typing import Any, Callable

from .spec import LayerSpec, Options

#: Field of ``LayerSpec`` each registry kind sets.
_KIND_FIELD = {"mixer": "mixer", "block": "block", "ffn": "ffn", "norm": "norm"}
#: Old names kept readable: ``gelu`` was the ``mlp`` FFN's name before the FFN registry.
FFN_ALIASES = {"gelu": "mlp"}


def _masformer(num_layers: int) -> str:
    full = max(1, math.ceil(num_layers / 4))
    return "sliding_window; softmax@" + ",".join(str(i) for i in range(full))


def _mamba_hybrid(num_layers: int) -> str:
    return "(mamba2 mamba2 mamba2 softmax)*"


#: name -> (schedule for a depth, what it reproduces).
SCHEDULE_PRESETS: dict[str, tuple[Callable[[int], str], str]] = {
    "masformer": (_masformer, "MASFormer (Zhang et al. 2023, 'Efficient Long-Range Transformers: You Need to Attend "
                              "More, but Not Necessarily at Every Layer'): exact softmax attention in the bottom "
                              "quarter of the layers (at least one), sliding_window attention in the others"),
    "mamba_hybrid": (_mamba_hybrid, "a Mamba/attention hybrid in the ratio of Jamba (Lieber et al. 2024) and "
                                    "Hunyuan-TurboS (2025): Mamba-2 in three of every four layers, exact softmax "
                                    "attention in the fourth"),
}


@dataclass(frozen=True)
class Part:
    name: str
    options: Options | None  # None: no parentheses given


@dataclass(frozen=True)
class Clause:
    specs: tuple[tuple[Part, ...], ...]  # one spec, or a repeated group
    repeat: bool
    layers: tuple[int, ...] | None  # None: a base clause


class ScheduleError(ValueError):
    """A schedule that does not parse or names something unknown; the message quotes the schedule."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def error(self, msg: str) -> ScheduleError:
        return ScheduleError(f"schedule {self.text!r}: {msg} (at character {self.pos})")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.pos += 1

    def name(self) -> str:
        self.skip()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_-"):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a name")
        return self.text[start:self.pos]

    def value(self) -> Any:
        self.skip()
        start, depth, quote = self.pos, 0, ""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            elif depth == 0 and ch in ",)":
                break
            self.pos += 1
        raw = self.text[start:self.pos].strip()
        try:
            return tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            raise self.error(f"option value {raw!r} is not a TOML literal (quote strings)") from None

    def part(self) -> Part:
        name = self.name()
        if self.peek() != "(":
            return Part(name, None)
        self.pos += 1
        options: dict[str, Any] = {}
        while self.peek() != ")":
            key = self.name()
            self.expect("=")
            if key in options:
                raise self.error(f"option {key!r} given twice")
            options[key] = self.value()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != ")":
                raise self.error("expected ',' or ')' after an option")
        self.pos += 1
        return Part(name, Options(options))

    def spec(self) -> tuple[Part, ...]:
        parts = [self.part()]
        while self.peek() == "/":
            self.pos += 1
            parts.append(self.part())
        return tuple(parts)

    def clause(self) -> Clause:
        if self.peek() == "(":
            self.pos += 1
            specs = []
            while self.peek() not in (")", ""):
                specs.append(self.spec())
            self.expect(")")
            self.expect("*")
            if not specs:
                raise self.error("an empty group")
            return Clause(tuple(specs), True, None)
        spec = self.spec()
        if self.peek() != "@":
            return Clause((spec,), False, None)
        self.pos += 1
        layers = [self.index()]
        while self.peek() == ",":
            self.pos += 1
            layers.append(self.index())
        return Clause((spec,), False, tuple(layers))

    def index(self) -> int:
        self.skip()
        start = self.pos
        if self.pos < len(self.text) and self.text[self.pos] == "-":
            self.pos += 1
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        try:
            return int(self.text[start:self.pos])
        except ValueError:
            raise self.error("expected a layer index") from None

    def parse(self) -> list[Clause]:
        clauses = [self.clause()]
        while self.peek() == ";":
            self.pos += 1
            clauses.append(self.clause())
        if self.peek():
            raise self.error(f"unexpected {self.peek()!r}")
        return clauses


def parse_schedule(text: str) -> list[Clause]:
    """The clauses of ``text`` (syntax in the module docstring); ScheduleError on a syntax error."""
    return _Parser(text).parse()


def _kind_of(name: str) -> str:
    from ..blocks import BLOCKS, FFNS, NORMS
    from ..mixers import MIXERS

    kinds = [kind for kind, reg in (("mixer", MIXERS), ("block", BLOCKS), ("ffn", FFNS), ("norm", NORMS))
             if name in reg]
    if name in FFN_ALIASES:
        kinds.append("ffn")
    if not kinds:
        raise ScheduleError(f"{name!r} is not a registered mixer, block, FFN or norm "
                            "(lightformer list; lightformer blocks)")
    if len(kinds) > 1:
        raise ScheduleError(f"{name!r} is registered as more than one of {kinds}")
    return kinds[0]


def _apply(layer: LayerSpec, spec: tuple[Part, ...], default: LayerSpec) -> LayerSpec:
    changes: dict[str, Any] = {}
    for part in spec:
        kind = _kind_of(part.name)
        if kind in changes:
            raise ScheduleError(f"a spec names two {kind}s ({changes[kind]!r} and {part.name!r})")
        name = FFN_ALIASES.get(part.name, part.name) if kind == "ffn" else part.name
        changes[kind] = name
        if part.options is not None:
            changes[f"{kind}_options"] = part.options
        elif name == getattr(default, kind):
            changes[f"{kind}_options"] = getattr(default, f"{kind}_options")
        else:
            changes[f"{kind}_options"] = Options()
    return replace(layer, **changes)


def expand_preset(schedule: str, num_layers: int) -> str:
    """``schedule`` itself, or the preset it names expanded for ``num_layers``."""
    name = schedule.strip()
    return SCHEDULE_PRESETS[name][0](num_layers) if name in SCHEDULE_PRESETS else schedule


def resolve_schedule(schedule: str, default: LayerSpec, num_layers: int) -> tuple[LayerSpec, ...]:
    """One ``LayerSpec`` per layer: ``default`` with ``schedule`` applied (empty = ``default`` everywhere).

    Raises:
        ScheduleError (a ValueError): a syntax error, an unknown name, two base clauses, or a layer index outside
            [-num_layers, num_layers).
    """
    layers = [default] * num_layers
    if not schedule.strip():
        return tuple(layers)
    clauses = parse_schedule(expand_preset(schedule, num_layers))
    bases = [c for c in clauses if c.layers is None]
    if len(bases) > 1:
        raise ScheduleError(f"schedule {schedule!r} has {len(bases)} base clauses; at most one may cover every layer")
    for clause in bases:
        layers = [_apply(default, clause.specs[i % len(clause.specs)], default) for i in range(num_layers)]
    for clause in clauses:
        if clause.layers is None:
            continue
        for index in clause.layers:
            if not -num_layers <= index < num_layers:
                raise ScheduleError(f"schedule {schedule!r}: layer {index} is outside a {num_layers}-layer model")
            layers[index] = _apply(layers[index], clause.specs[0], default)
    return tuple(layers)
