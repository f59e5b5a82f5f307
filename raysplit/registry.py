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
        return list(self._entries)       # in the order registered: the built-in ones first

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
                return getattr(_import(module), attr)
            except (ImportError, AttributeError) as e:
                raise ConfigError(field or self.field, name, f"{self.allowed()} ({e})") from None
        raise ConfigError(field or self.field, name, self.allowed())


SEARCH_PATHS: list[str] = []     # where users' modules were looked for (runtime.connect gives them to Ray)
USER_MODULES: list[str] = []     # the users' modules imported by name (shipped to a cluster's workers)


def add_search_path(directory: str | Path) -> None:
    """Let ``imports:`` and ``module:attr`` names find a user's modules in ``directory`` (the config's folder,
    the current directory)."""
    d = str(Path(directory).resolve())
    if d not in sys.path:
        sys.path.insert(0, d)
    if d not in SEARCH_PATHS:
        SEARCH_PATHS.append(d)


def _import(name: str):
    module = importlib.import_module(name)
    if name not in USER_MODULES:
        USER_MODULES.append(name)
    return module


def user_packages() -> list[str]:
    """Folders (or files) of the top-level packages of the users' modules, to ship to a cluster."""
    out = []
    for name in USER_MODULES:
        top = sys.modules.get(name.split(".")[0])
        path = getattr(top, "__file__", None)
        if path:
            path = str(Path(path).parent) if Path(path).name == "__init__.py" else path
            if path not in out and not path.startswith(str(Path(__file__).parent)):
                out.append(path)
    return out


def import_modules(modules: list[str], field: str = "imports") -> None:
    """Import the user's modules named in a config (they register their models, datasets, ... on import)."""
    add_search_path(Path.cwd())
    for i, name in enumerate(modules):
        try:
            _import(name)
        except ImportError as e:
            raise ConfigError(f"{field}[{i}]", name, f"an importable Python module ({e})") from None


