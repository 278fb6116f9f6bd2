"""Check the structure of JSON we read (manifests, sidecars, plans) before using it.

A schema is plain data:

- a type or tuple of types (``str``, ``(int, float)``; ``bool`` is never taken for a number);
- ``[item]``: a list whose items match ``item``;
- ``{"key": schema, "key?": schema}``: an object with those keys (``?`` = optional; other
  keys are allowed, so newer writers stay readable);
- ``MapOf(schema)``: an object of any keys, each value matching ``schema``;
- ``Any``: anything.

:func:`check` raises :class:`~dit_deploy.errors.ArtifactError` naming the file, the field
path (``graphs.dit_fused.inputs[0].shape``) and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any as _Any

from .errors import ArtifactError

Any = object()
NUMBER = (int, float)


@dataclass(frozen=True)
class MapOf:
    """An object whose keys are free and whose values all match ``value``."""

    value: object


def _name(schema: object) -> str:
    if schema is Any:
        return "anything"
    if isinstance(schema, type):
        return {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true/false",
            "dict": "an object",
            "list": "a list",
        }.get(schema.__name__, schema.__name__)
    if isinstance(schema, tuple):
        if schema == NUMBER:
            return "a number"
        return " or ".join(_name(s) for s in schema)
    if isinstance(schema, list):
        return "a list"
    return "an object"


def _matches_type(value: _Any, schema: type | tuple) -> bool:
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _describe(value: _Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def check(value: _Any, schema: object, source: str, where: str = "") -> None:
    """Raise ArtifactError unless ``value`` matches ``schema`` (see the module docstring)."""

    def fail(expected: str) -> None:
        field = where or "the top level"
        raise ArtifactError(
            f"{source}: field {field} must be {expected}, got {_describe(value)}; the file is "
            "corrupt or was written by another tool: re-create it"
        )

    if schema is Any:
        return
    if isinstance(schema, (type, tuple)):
        if not _matches_type(value, schema):
            fail(_name(schema))
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            fail("a list")
        for i, item in enumerate(value):
            check(item, schema[0], source, f"{where}[{i}]")
        return
    if not isinstance(value, dict):
        fail("an object")
    if isinstance(schema, MapOf):
        for key, item in value.items():
            check(item, schema.value, source, f"{where}.{key}" if where else str(key))
        return
    assert isinstance(schema, dict)
    for key, sub in schema.items():
        optional = key.endswith("?")
        name = key.rstrip("?")
        path = f"{where}.{name}" if where else name
        if name not in value:
            if optional:
                continue
            raise ArtifactError(
                f"{source}: required field {path} is missing; the file is incomplete: re-create it"
            )
        check(value[name], sub, source, path)
