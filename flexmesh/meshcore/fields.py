"""The one builder and validator of FlexMesh's frozen config dataclasses: the mesh config from
YAML and the routing policy from YAML, the Admin API and the controller alike.

Both raise `InvalidRequestError` (a `ValueError`) naming the dotted field and the value, so a
bad config file and a bad `SetPolicy` read the same, and the gateway maps the latter to
INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from flexmesh.meshcore.errors import InvalidRequestError

T = TypeVar("T")


def check(cond: bool, name: str, value: object, rule: str) -> None:
    """Raise `InvalidRequestError` naming field `name` unless `cond`."""
    if not cond:
        raise InvalidRequestError(name, f"must be {rule}, got {value!r}")


def build(cls: type[T], data: Any, prefix: str = "", base: T | None = None) -> T:
    """Dataclass `cls` from plain data (YAML, JSON, a partial update), rejecting unknown keys
    and wrong types by name. Keys `data` leaves out keep `base`'s values (or the defaults),
    nested dataclasses included, so `{"routes": {"code": {"strategy": "none"}}}` changes one
    field."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise InvalidRequestError(where, f"must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidRequestError(f"{prefix}{unknown[0]}", f"unknown key (known: {sorted(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        current = getattr(base, key) if base is not None else _default(fields[key])
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}", current)
    if base is not None:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    return cls(**kwargs)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert(hint: Any, value: Any, name: str, current: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        base = current if dataclasses.is_dataclass(current) else None
        return build(hint, value, f"{name}.", base)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InvalidRequestError(name, f"must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_convert(item, v, f"{name}[]", None) for v in value)
    if origin in (typing.Union, types.UnionType) or hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and type(value) is not hint:
        raise InvalidRequestError(name, f"must be {hint.__name__}, got {value!r}")
    return value
