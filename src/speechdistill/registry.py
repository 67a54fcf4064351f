"""Names in configs -> the classes that implement them, for the few things users plug in
(unit types, encoder blocks, tap losses, SSL students).

    >>> UNIT_TYPES = Registry("unit type")
    >>> @UNIT_TYPES.register("letter")
    ... class Letters(UnitType): ...
    >>> UNIT_TYPES["letter"], UNIT_TYPES.names()

A name that is not registered is an error naming the valid ones; registering a name
twice is an error too (two plug-ins must not silently replace each other).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from speechdistill.utils import UsageError

T = TypeVar("T")


class UnknownNameError(UsageError, ValueError):
    """A name that no registered class answers to; the message lists the valid ones."""


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.what} {name!r} is registered twice ({self._classes[name]} and {cls})")
            self._classes[name] = cls
            cls.name = name
            return cls

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.what} {name!r}; valid: {', '.join(self._classes)}") from None

    def check(self, name: str) -> T:
        """The class of ``name``; an unknown name is an error that lists the valid ones."""
        return self[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)
