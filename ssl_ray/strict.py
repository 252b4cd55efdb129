"""The one rule every typed input shares: a bool is never a number.

YAML reads ``train.epochs=true`` as ``True``, and pydantic's lax mode takes ``True`` for the
int 1: a run would start with one epoch. Numbers keep pydantic's other lax conversions (a YAML
list for a tuple, an int for a float); only bools are refused where a field cannot hold one.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(arg) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _admits_bool(typing.get_args(annotation)[0])
    return annotation is Any


def _element_types(annotation: Any) -> tuple[Any, ...]:
    """The element types of a tuple (or list) field, for the bools inside a YAML list."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        return tuple(arg for arg in typing.get_args(annotation) if arg is not Ellipsis)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _element_types(arg))
    return ()


class NoBoolNumbers(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and not _admits_bool(annotation):
            raise ValueError("expected a number, not a boolean")
        if isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value):
            elements = _element_types(annotation)
            if elements and not any(_admits_bool(t) for t in elements):
                raise ValueError("expected numbers, not booleans")
        return value


def yaml_problem(error: Exception) -> str:
    """A YAML parser's error as ``line L, column C: what`` (1-based), on one line."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"
