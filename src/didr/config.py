"""Typed configuration: dataclasses loaded from YAML, with ``section.field=value`` overrides.

Every field is type-checked on load; an unknown field, a wrong type or an out-of-range value
raises a :class:`ConfigError` naming the field (``train.batch_size``) and what is allowed,
before anything is written. Dataclasses may define ``validate(self, path)`` for range checks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from didr.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown fields and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            allowed = ", ".join(fields)
            raise ConfigError(f"unknown config field {where!r}; {cls.__name__} has: {allowed}")
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate(obj, path)
    return obj


def validate(obj: Any, path: str = "") -> None:
    """Run ``validate`` on a dataclass and all nested ones."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{path}.{f.name}" if path else f.name)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(path)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.steps=100`` -> (["train", "steps"], 100); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path, what: str = "config file", fields: str = "section: fields") -> dict:
    """The top-level mapping of a YAML (or JSON) file; ``what`` names the file in errors.

    An empty file (or one holding only comments, ``null`` or ``{}``) is refused rather than read as
    "all defaults": a run from an empty config would silently start the default experiment.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path}: not valid YAML or JSON ({str(err).splitlines()[0]})") from None
    if data is None or data == {}:
        raise ConfigError(f"{what} {path} is empty; it needs at least its {fields}")
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{what} {path}: expected a mapping at the top level ({fields}), got {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults) with ``section.field=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def require(cond: bool, path: str, message: str) -> None:
    """Raise a ConfigError naming ``path`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{path}: {message}")
