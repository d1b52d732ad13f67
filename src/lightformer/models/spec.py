"""``LayerSpec``: what one layer of a model is (mixer, block, FFN, norm and their options), and ``Options``, the
immutable, hashable mapping every option table of a frozen config is stored as."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Options(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Options):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class Options(dict):
    """A read-only ``str -> value`` dict (nested tables become ``Options``, lists become tuples): hashable, equal to
    a dict with the same items, and serialisable as one (JSON, pickle, ``dataclasses.asdict``). ``to_dict()`` gives
    plain dicts and lists back (for TOML and for callers that mutate)."""

    def __init__(self, items: Any = (), /) -> None:
        items = dict(items)
        bad = [k for k in items if not isinstance(k, str)]
        if bad:
            raise TypeError(f"option names must be strings, got {bad!r}")
        super().__init__((k, _freeze(v)) for k, v in sorted(items.items()))

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Options are read-only: build a new config instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))

    def __reduce_ex__(self, protocol: int):
        return (Options, (dict(self),))

    def __copy__(self) -> "Options":
        return self

    def __deepcopy__(self, memo: dict) -> "Options":
        return self  # immutable all the way down

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.items()}


@dataclass(frozen=True)
class LayerSpec:
    """One layer: a registered mixer, block, FFN and norm, each with its options (``Options``; dicts given here
    are frozen). ``ffn_mult`` is the FFN's hidden width as a multiple of D."""

    mixer: str = "softmax"
    mixer_options: Mapping[str, Any] = field(default_factory=Options)
    block: str = "pre_norm"
    block_options: Mapping[str, Any] = field(default_factory=Options)
    ffn: str = "mlp"
    ffn_options: Mapping[str, Any] = field(default_factory=Options)
    ffn_mult: float = 4.0
    norm: str = "layernorm"
    norm_options: Mapping[str, Any] = field(default_factory=Options)

    def __post_init__(self) -> None:
        for name in ("mixer_options", "block_options", "ffn_options", "norm_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a table of options, got {value!r}")
            object.__setattr__(self, name, Options(value))

    def describe(self) -> str:
        """``mixer(opts)/block/ffn/norm`` in the schedule syntax, leaving out nothing."""
        def part(name: str, opts: Mapping[str, Any]) -> str:
            inner = ", ".join(f"{k}={v!r}" for k, v in opts.items())
            return f"{name}({inner})" if inner else name
        return "/".join([part(self.mixer, self.mixer_options), part(self.block, self.block_options),
                         part(self.ffn, self.ffn_options), part(self.norm, self.norm_options)])
