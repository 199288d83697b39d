"""Registries at the extension points, as timm registers its models.

A CAM method, an ensemble operator, a refinement, a classifier kind or a segmentation head
is one function plus one registration; every stage, page and widget that lists them reads
the registry, so a new entry appears everywhere with no other edit::

    OPERATORS = Registry[Operator]("ensemble operator")

    @OPERATORS.register("or", label="probabilistic OR")
    def fuse_or(maps): ...

An unknown name is a :class:`ConfigError` that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, a human label for tables and widgets, the object
    itself and free-form attributes (e.g. what a refinement needs)."""

    name: str
    label: str
    obj: T
    attrs: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> entry, in registration order."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, label: str = "", replace: bool = False, **attrs: Any) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (a second registration of a name is an
        error unless ``replace``)."""
        def decorate(obj: T) -> T:
            self.add(name, obj, label=label, replace=replace, **attrs)
            return obj
        return decorate

    def add(self, name: str, obj: T, *, label: str = "", replace: bool = False, **attrs: Any) -> None:
        if name in self._entries and not replace:
            raise ConfigError(f"{self.what} {name!r} is already registered")
        self._entries[name] = Entry(name, label or name, obj, dict(attrs))

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(self._entries) or 'none'}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def label(self, name: str) -> str:
        """The entry's label, or the name itself for a name not registered (e.g. read back
        from an older run)."""
        return self._entries[name].label if name in self._entries else name

    def check(self, names: Any) -> None:
        """Raise for the first unknown name among ``names``."""
        for n in names:
            self.entry(n)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
