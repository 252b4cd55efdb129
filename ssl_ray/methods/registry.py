"""The one registry of SSL methods; a duplicate name is an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl_ray.config import PipelineConfig
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


def build_method(config: PipelineConfig) -> SSLMethod:
    try:
        cls = METHODS[config.method.name]
    except KeyError:
        raise ValueError(f"unknown method {config.method.name!r}; known: {', '.join(sorted(METHODS))}") from None
    return cls(config)
