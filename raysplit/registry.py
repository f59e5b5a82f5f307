"""Registries: the names a config may use for models, datasets, topologies, algorithms, plug-ins and codecs.

Each concept's module fills its registry with ``@REGISTRY.register("name")``; the config's allowed values
come from them. A user's own entry needs no edit of raysplit: register it in their own module and list
that module under ``imports:`` in the YAML, or name it directly as ``package.module:attribute``.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Iterator

from raysplit.errors import ConfigError


class Registry:
    def __init__(self, kind: str, field: str):
        self.kind, self.field = kind, field      # e.g. "model", "model.name": used in error messages
        self._entries: dict[str, Any] = {}

    def register(self, name: str | None = None, obj: Any = None) -> Any:
        """``@REG.register("name")`` on a function or class, or ``REG.register("name", obj)``."""
        def add(o):
            key = name or getattr(o, "__name__", None)
            if not key:
                raise ValueError(f"a {self.kind} needs a name to be registered")
            self._entries[key] = o
            return o
        return add if obj is None else add(obj)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def allowed(self) -> str:
        return f"one of {', '.join(self.names())} (registered {self.kind}s), or package.module:attribute"

    def get(self, name: str, field: str | None = None) -> Any:
        """The registered entry, or ``module:attr`` imported; anything else is a one-line ConfigError."""
        if not isinstance(name, str):
            raise ConfigError(field or self.field, name, self.allowed())
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ConfigError(field or self.field, name, f"{self.allowed()} ({e})") from None
        raise ConfigError(field or self.field, name, self.allowed())


def import_modules(modules: list[str], field: str = "imports") -> None:
    """Import the user's modules named in a config (they register their models, datasets, ... on import).
    The current directory is searched too, as ``python -m`` would."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{field}[{i}]", name, f"an importable Python module ({e})") from None


