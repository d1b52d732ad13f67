"""Name -> implementation registries (one per kind: mixers, presets, peers ...).

A registered class carries a frozen ``config_class`` dataclass; ``create(name, **overrides)`` builds that config
from the overrides (so option names and types are checked in one place) and instantiates the class with it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes of one kind.

    Args:
        kind: what is registered (``"mixer"``), used in error messages.

    Raises:
        ValueError: on a duplicate name (``register``) or an unknown name (``get``/``create``).
        TypeError: on an unknown option passed to ``create``; the message names it and lists the valid ones.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@MIXERS.register("performer")``. The class must define ``config_class``."""
        if not name or name != name.strip() or not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.kind} name must be snake_case, got {name!r}")

        def decorator(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            config_class = getattr(cls, "config_class", None)
            if config_class is None or not dataclasses.is_dataclass(config_class):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} needs a dataclass `config_class` attribute")
            cls.registry_name = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"*softmax*"``)."""
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def options(self, name: str) -> dict[str, Any]:
        """The option names of ``name``'s config with their defaults (``dataclasses.MISSING`` when required)."""
        cls = self.get(name)
        out = {}
        for f in dataclasses.fields(cls.config_class):  # type: ignore[attr-defined]
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = dataclasses.MISSING
        return out

    def make_config(self, name: str, **overrides: Any) -> Any:
        """Build ``name``'s config from ``overrides``; an unknown option raises ``TypeError`` naming it."""
        cls = self.get(name)
        valid = self.options(name)
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for {self.kind} {name!r}; "
                f"valid options: {', '.join(valid)}"
            )
        missing = [k for k, v in valid.items() if v is dataclasses.MISSING and k not in overrides]
        if missing:
            raise TypeError(f"{self.kind} {name!r} requires option(s): {', '.join(missing)}")
        return cls.config_class(**overrides)  # type: ignore[attr-defined]

    def create(self, name: str, **overrides: Any) -> Any:
        """Instantiate ``name`` with its config built from ``overrides``."""
        return self.get(name)(self.make_config(name, **overrides))  # type: ignore[operator]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
