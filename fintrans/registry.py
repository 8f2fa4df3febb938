"""One registry style for models, tasks, datasets and op implementations.

    MODELS = Registry("model", load=("fintrans.models.decoder_lm", ...))
    MODELS.register("decoder_lm", spec)
    MODELS.get("decoder_lm")        # unknown names raise the registry's error naming every valid choice
    MODELS.names()                  # sorted

`load` names modules that register entries when imported; they are imported on first lookup, so
importing a registry is cheap and never imports (say) every model file.
"""
from __future__ import annotations

import importlib
from typing import Generic, Iterator, Sequence, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name was looked up, or a name was registered twice with different entries."""


class Registry(Generic[T]):
    def __init__(self, kind: str, *, load: Sequence[str] = (), error: type[Exception] = RegistryError):
        self.kind = kind
        self._load_modules = tuple(load)
        self._loaded = not self._load_modules
        self._entries: dict[str, T] = {}
        self._error = error

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if not replace and name in self._entries and self._entries[name] != entry:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Removes `name` (for tests and notebooks that register a throwaway entry)."""
        if name not in self._entries:
            raise self._error(f"{self.kind} {name!r} is not registered")
        del self._entries[name]

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the imported modules call register, not _load
            for module in self._load_modules:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise self._error(f"unknown {self.kind} {name!r}; registered: {self.names()}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())
