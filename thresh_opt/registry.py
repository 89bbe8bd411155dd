"""Registries: every sampler, objective and architecture declared once, by name.

Each entry holds what it names (a class or function), its metadata, and a pydantic model of its options,
so that a study file is checked against the entry when it loads, before a model loads. The entries are
declared next to what they name (``thresh_opt.samplers.catalog``, ``thresh_opt.objectives.catalog``,
``thresh_opt.architectures``); a registry imports its declaring module the first time it is read, which
keeps this module free of heavy imports and every list of names complete.

Example:
    >>> from thresh_opt.registry import SAMPLERS
    >>> "greedy" in SAMPLERS.names()
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from thresh_opt.errors import ConfigError, UserError

T = TypeVar("T")


class NoOptions(BaseModel):
    """An entry without options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: what it names, its metadata and its options model."""

    name: str
    target: T
    options: type[BaseModel] = NoOptions
    meta: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, options: Mapping[str, Any], source: str, field_path: str) -> BaseModel:
        """The options checked against the entry's model; a ConfigError naming the first bad field."""
        try:
            return self.options.model_validate(dict(options))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            problem = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(self.options.model_fields) or "none"
                problem = f"not an option of {getattr(self.target, '__name__', self.name)}; allowed: {allowed}"
            raise ConfigError(source, f"{field_path}.{where}" if where else field_path, problem) from None


class Registry(Generic[T]):
    """Named entries of one kind, filled by importing the module that declares them.

    Args:
        kind: what the entries are ("sampler", "objective", "architecture"), for messages.
        declared_in: the module whose import registers every entry.
    """

    def __init__(self, kind: str, declared_in: str) -> None:
        self.kind, self._declared_in = kind, declared_in
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, target: T, options: type[BaseModel] = NoOptions, **meta: Any) -> T:
        """Declare `name`; a second declaration of one name is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, options, meta)
        return target

    def decorator(self, name: str, options: type[BaseModel] = NoOptions, **meta: Any) -> Callable[[T], T]:
        """`@REGISTRY.decorator("name", ...)` over the class or function."""
        def wrap(target: T) -> T:
            return self.register(name, target, options, **meta)

        return wrap

    def _all(self) -> dict[str, Entry[T]]:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._declared_in)
        return self._entries

    def names(self) -> tuple[str, ...]:
        """Every registered name, in declaration order."""
        return tuple(self._all())

    def where(self, **meta: Any) -> tuple[str, ...]:
        """The names whose metadata has these values."""
        return tuple(n for n, e in self._all().items() if all(e.meta.get(k) == v for k, v in meta.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._all().values()))

    def __getitem__(self, name: str) -> Entry[T]:
        entries = self._all()
        if name not in entries:
            raise UserError(f"unknown {self.kind} {name!r}; allowed: {', '.join(entries)}")
        return entries[name]

    def targets(self) -> Mapping[str, T]:
        """A read-only name -> target view (for callers that only need what the names name)."""
        return _Targets(self)

    def check(self, name: str) -> str:
        """The name, or a ValueError listing the allowed (for pydantic validators)."""
        if name not in self._all():
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._all())}")
        return name


class _Targets(Mapping[str, T]):
    def __init__(self, registry: Registry[T]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> T:
        if name not in self._registry:
            raise KeyError(name)
        return self._registry[name].target

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())


SAMPLERS: Registry[Any] = Registry("sampler", "thresh_opt.samplers.catalog")
OBJECTIVES: Registry[Any] = Registry("objective", "thresh_opt.objectives.catalog")
ARCHITECTURES: Registry[Any] = Registry("architecture", "thresh_opt.architectures")
