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


# --- flat training configs (NeRF head/lips, torso): `--set FIELD=VALUE` without a stage prefix ---

def named_preset(presets: dict[str, C], name: str, what: str, **overrides: Any) -> C:
    """``presets[name]`` with ``overrides`` applied; one-line InputError for an unknown name or field.
    ``what`` names the config in messages ("training", "torso")."""
    from synctalk.errors import InputError

    if name not in presets:
        raise InputError(f"unknown {what} preset {name!r}; choose from {', '.join(presets)}")
    base = presets[name]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(base)})  # type: ignore[arg-type]
    if unknown:
        raise InputError(f"unknown {what} setting(s) {unknown}")
    return dataclasses.replace(base, **overrides)  # type: ignore[type-var]


def parse_flat_overrides(defaults: Any, items: list[str],
                         optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["steps=500", "amp=false"]`` -> typed overrides, types taken from ``defaults``' field values.

    Fields whose default is None need a parser in ``optional`` (field -> callable(str)); "none"/"null"
    gives None for them. Errors are one-line InputErrors naming the item."""
    from synctalk.errors import InputError

    optional = optional or {}
    name = type(defaults).__name__
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not hasattr(defaults, key):
            raise InputError(f"bad --set {item!r}: expected FIELD=VALUE with a {name} field")
        current = getattr(defaults, key)
        try:
            if isinstance(current, bool):
                value: Any = _coerce(raw, bool)
            elif isinstance(current, (int, float, str)):
                value = type(current)(raw)
            elif current is None:
                value = None if raw.lower() in ("none", "null") else optional.get(key, str)(raw)
            else:
                value = raw
        except ValueError:
            raise InputError(f"bad --set {item!r}: {raw!r} is not a valid {type(current).__name__}") from None
        out[key] = value
    return out
