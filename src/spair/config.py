"""Typed configuration dataclasses: parsing, validation and ``key=value`` overrides.

Every configurable part of spair is a (frozen-free) dataclass whose fields carry their defaults
and, through :func:`param`, their allowed range and a one-line help text. Configs are passed
explicitly; there is no module-global configuration.

- :func:`from_dict` builds a config from plain data (a JSON/TOML file, a checkpoint), rejecting
  unknown keys, wrong types and out-of-range values with a :class:`ConfigError` naming the field.
- :func:`apply_overrides` applies command-line ``section.key=value`` strings.
- :func:`to_dict` gives plain data back (tuples become lists), suitable for JSON.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .errors import ConfigError

T = TypeVar("T")


def param(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
          lo_open: bool = False, hi_open: bool = False, help: str = "",
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with an allowed range ``[lo, hi]`` (open ends with ``lo_open``/``hi_open``)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _resolve_hints(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists → tuples, int → float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in get_args(tp))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where + ".")
    if tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tp(value)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {tp!r}")  # a bug in a config class


def _check_range(value: Any, f: dataclasses.Field, where: str) -> None:
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    if lo is None and hi is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or v is None:
            continue
        if lo is not None and (v < lo or (f.metadata.get("lo_open") and v == lo)):
            op = ">" if f.metadata.get("lo_open") else ">="
            raise ConfigError(f"{where}: {v!r} is out of range (must be {op} {lo})")
        if hi is not None and (v > hi or (f.metadata.get("hi_open") and v == hi)):
            op = "<" if f.metadata.get("hi_open") else "<="
            raise ConfigError(f"{where}: {v!r} is out of range (must be {op} {hi})")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from ``data``; unknown keys, wrong types and bad ranges raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table of settings")
    hints = _resolve_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown setting '{prefix}{key}'{hint}")
    kwargs = {}
    for name, value in data.items():
        where = prefix + name
        v = _coerce(value, hints[name], where)
        _check_range(v, fields[name], where)
        kwargs[name] = v
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    return obj


def validate(cfg: Any, prefix: str = "") -> None:
    """Re-check every field of an existing config (types and ranges), recursively."""
    from_dict(type(cfg), to_dict(cfg), prefix=prefix)


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value``: JSON if it parses (numbers, true, [1,2]), else a string."""
    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    if low.lower() in ("none", "null"):
        return None
    try:
        return json.loads(low)
    except json.JSONDecodeError:
        if "," in low and not low.startswith(("[", "{")):
            return [parse_value(p) for p in low.split(",")]
        return text


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return a copy of ``cfg`` with ``a.b=value`` overrides applied and the result validated."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override '{item}' has an empty key")
        node = data
        for i, p in enumerate(parts[:-1]):
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown setting '{'.'.join(parts[: i + 1])}'")
            node = node[p]
        if parts[-1] not in node:
            # let from_dict produce the error with a suggestion
            node[parts[-1]] = parse_value(text)
        else:
            node[parts[-1]] = parse_value(text)
    return from_dict(type(cfg), data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into plain data; errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - any parse failure is a user error here
        raise ConfigError(f"config file {path} cannot be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return data


def describe(cls: type, prefix: str = "") -> list[str]:
    """Lines ``key = default  # help [range]`` for every field, for ``--help``-style listings."""
    out = []
    hints = _resolve_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rng = ""
        if f.metadata.get("lo") is not None or f.metadata.get("hi") is not None:
            rng = f" [{f.metadata.get('lo')}, {f.metadata.get('hi')}]"
        helptext = f.metadata.get("help", "")
        out.append(f"{prefix}{f.name} = {json.dumps(to_dict(default) if dataclasses.is_dataclass(default) else (list(default) if isinstance(default, tuple) else default))}"
                   + (f"  # {helptext}{rng}" if helptext or rng else ""))
    return out
