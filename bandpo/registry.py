"""One small name -> object registry, used by every registry in bandpo (divergences, methods, aggregations,
tasks, rewards, samplers, symbolic generators).

    DIVERGENCES = Registry("divergence", hint="register your own with bandpo.register_divergence")
    DIVERGENCES.register("kl", kl)          # ValueError if "kl" is taken (overwrite=True replaces it)
    DIVERGENCES.get("kl")                   # ValueError listing the known names if unknown
    DIVERGENCES.names()                     # sorted names
    DIVERGENCES.unregister("kl")

Lookups never depend on the order in which entries were registered, only on the name. Imports nothing but the
standard library, so every layer may use it.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Optional, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects of one kind, with errors that list the known names."""

    def __init__(self, kind: str, *, hint: str = "") -> None:
        """
        Args:
            kind: what an entry is, singular, for messages ("divergence", "method", ...).
            hint: appended to the unknown-name error, e.g. how to register one's own.
        """
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Add ``obj`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is not a non-empty string, or is taken and ``overwrite`` is False.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass overwrite=True to replace it)")
        self._entries[name] = obj
        return obj

    def decorator(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """``@REG.decorator("name")`` registers the decorated object under ``name``."""

        def deco(obj: T) -> T:
            return self.register(name, obj, overwrite=overwrite)

        return deco

    def get(self, name: str) -> T:
        """The entry called ``name``.

        Raises:
            ValueError: unknown name (or not a string); the message lists the known names.
        """
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        what = repr(name) if isinstance(name, str) else f"of type {type(name).__name__}"
        hint = f" ({self.hint})" if self.hint else ""
        raise ValueError(f"unknown {self.kind} {what}; known {self.kind}s: {', '.join(self.names())}{hint}")

    def unregister(self, name: str) -> None:
        """Remove the entry called ``name`` (ValueError listing the known names if there is none)."""
        self.get(name)
        del self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        return [(n, self._entries[n]) for n in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def find(self, name: str) -> Optional[T]:
        """The entry called ``name`` or None (no error)."""
        return self._entries.get(name)
