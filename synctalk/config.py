"""Typed configuration helpers: dataclass configs with named presets.

Each stage owns a small frozen dataclass next to its code; pipelines aggregate them. A preset is a
named function of overrides, so `synctalk prepare --preset fast` is one word, and any field can still
be overridden with `--set stage.field=value` (parsed by type, no 60 flags).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from synctalk.errors import SyncTalkError

C = TypeVar("C")


def _coerce(value: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if typ in (int, float, str):
        return typ(value)
    if origin in (tuple, list):
        args = typing.get_args(typ)
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()] if value else []
        inner = args[0] if args else str
        return origin(_coerce(p.strip(), inner) for p in parts)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, args[0])
    raise ValueError(f"cannot parse a value of type {typ}")


def apply_overrides(cfg: C, overrides: list[str] | dict[str, str]) -> C:
    """Return a copy of ``cfg`` with ``a.b=value`` overrides applied (nested dataclasses allowed)."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise SyncTalkError(f"--set expects key=value, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _set(cfg: Any, path: list[str], value: str, full: str) -> Any:
    if not dataclasses.is_dataclass(cfg):
        raise SyncTalkError(f"unknown setting {full!r}")
    hints = typing.get_type_hints(type(cfg))
    name = path[0]
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(cfg))
        raise SyncTalkError(f"unknown setting {full!r}; known here: {known}")
    current = getattr(cfg, name)
    if len(path) > 1:
        new = _set(current, path[1:], value, full)
    else:
        if dataclasses.is_dataclass(current):
            raise SyncTalkError(f"{full!r} is a group of settings; set one of its fields")
        try:
            new = _coerce(value, hints[name])
        except ValueError as e:
            raise SyncTalkError(f"bad value for {full}: {e}") from None
    return dataclasses.replace(cfg, **{name: new})


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
