"""One small registry type for backbones, metrics and stacking candidates.

A registry maps a name to an item that carries a ``name`` attribute; an unknown name is an error
that lists the known ones (the timm ``create_model`` habit).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class UnknownNameError(KeyError):
    """An unknown name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Named items of one kind.

    Args:
        kind: what the items are, for messages ("backbone", "metric").
        ordered: list names in registration order instead of sorted.
    """

    def __init__(self, kind: str, ordered: bool = False):
        self.kind = kind
        self._ordered = ordered
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        if item.name in self._items:
            raise ValueError(f"{self.kind} {item.name!r} is registered twice")
        self._items[item.name] = item
        return item

    def names(self) -> list[str]:
        return list(self._items) if self._ordered else sorted(self._items)

    def get(self, name: str) -> T:
        known = self.names()
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(known)}")
        return self._items[name]
