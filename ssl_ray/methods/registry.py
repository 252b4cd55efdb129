"""The one registry of SSL methods; a duplicate name is an error."""

from __future__ import annotations

from collections.abc import Callable

from ssl_ray.methods.base import SSLMethod

METHODS: dict[str, type[SSLMethod]] = {}


def register_method(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    def add(cls: type[SSLMethod]) -> type[SSLMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered by {METHODS[name].__name__}")
        METHODS[name] = cls
        cls.name = name
        return cls

    return add


def method_class(name: str) -> type[SSLMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None
