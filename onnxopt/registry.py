"""Pass registry: built-in and third-party passes arrive through the ``onnxopt.passes``
entry-point group, so the framework never imports a specific pass."""

from __future__ import annotations

from importlib import metadata
from typing import Iterable

from .errors import UsageError
from .pass_base import Numerics, Pass

ENTRY_POINT_GROUP = "onnxopt.passes"


class Registry:
    """Name -> Pass class. Entry points are loaded lazily, on first lookup."""

    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}
        self._loaded = False

    def register(self, cls: type[Pass]) -> type[Pass]:
        if not cls.name:
            raise ValueError(f"{cls.__name__} has no name")
        existing = self._passes.get(cls.name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"pass name '{cls.name}' is taken by {existing.__module__}.{existing.__qualname__}")
        self._passes[cls.name] = cls
        return cls

    def unregister(self, name: str) -> None:
        self._passes.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not take the tool down
                raise UsageError(f"pass plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from None
            self.register(cls)

    def get(self, name: str) -> type[Pass]:
        self._load_entry_points()
        try:
            return self._passes[name]
        except KeyError:
            raise UsageError(f"unknown pass '{name}'; known passes: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._passes)

    def all(self) -> Iterable[type[Pass]]:
        return (self._passes[n] for n in self.names())


REGISTRY = Registry()


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass known by its ``name``."""
    return REGISTRY.register(cls)


def get_pass(name: str) -> type[Pass]:
    return REGISTRY.get(name)


def pass_names() -> list[str]:
    return REGISTRY.names()


DEFAULT_ORDER = ("cleanup", "fold", "fuse")


def lossless_pass_names() -> list[str]:
    """Passes whose default options keep outputs (EXACT or APPROX numerics)."""
    return [c.name for c in REGISTRY.all() if c.numerics is not Numerics.LOSSY]


def default_pipeline() -> str:
    """The lossless default pipeline, limited to the passes that exist."""
    known = set(pass_names())
    return ",".join(name for name in DEFAULT_ORDER if name in known)
