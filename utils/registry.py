"""A minimal name -> builder registry (one per folder: models, datasets, losses, ...)."""
from __future__ import annotations

from typing import Callable

from .errors import ShipReIDError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None):
        def add(obj):
            key = name or obj.__name__
            if key in self._items:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj
        return add

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return list(self._items)

    def get(self, name: str, key_hint: str = "") -> Callable:
        if name not in self._items:
            where = f" (config key {key_hint})" if key_hint else ""
            raise ShipReIDError(f"unknown {self.kind} {name!r}{where}; registered: {sorted(self._items)}")
        return self._items[name]
