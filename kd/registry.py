"""One small name -> entry registry, used by models, data sets and distillers alike.

An entry is registered with a decorator, `@REGISTRY.register("name")`; entries that take options (data
sets, distillers) name their options dataclass there too, `@DISTILLERS.register("kd", options=KDOptions)`,
and carry it as `entry.Options`. Names keep their registration order.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from kd.errors import KDError

T = TypeVar("T")


def nearest(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or '' when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Generic[T]):
    """Maps names to entries; `register` is a decorator, `get` explains a wrong name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None, options: type | None = None) -> Callable[[T], T]:
        """Decorator: add the entry under `name` (default: its __name__); `options` becomes `entry.Options`."""
        def add(obj: T) -> T:
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                raise KDError(f"{self.kind} '{key}' is already registered (by {describe_origin(self._entries[key])}); "
                              f"register yours under another name")
            if options is not None:
                obj.Options = options
            obj.registered_name = key  # the name recipes use (messages name options as <name>.<option>)
            self._entries[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KDError(
                f"unknown {self.kind} '{name}'{nearest(name, self._entries)}; "
                f"valid names: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def describe_origin(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
