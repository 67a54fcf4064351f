"""Typed experiment configs: dataclasses loaded from YAML with dotted overrides.

    >>> cfg = load_config(TrainConfig, "configs/asr/aux.yaml", ["optim.lr=5e-4", "model.encoder.preset=s"])
    >>> save_config(cfg, "exp/run/config.yaml")

Every key is checked before any work starts: an unknown key is an error that
names the valid keys, a value of the wrong type is an error that names the key
and the type wanted. YAML is read with ``safe_load``: configs never run code.
A config may start from another: ``base: baseline.yaml`` (a path relative to the
file) loads that file first and the rest of this one is merged into it, mappings
key by key, lists and values replaced whole.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechdistill.utils import UsageError, atomic_write_text


class ConfigError(UsageError, ValueError):
    """A config key or value that cannot be used; the message names the key."""


def _check(tp, value, key: str):
    """Coerce ``value`` to the annotated type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_check(arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a dict, checking keys and types recursively."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = [n for n, f in fields.items() if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys of "
            f"{prefix.rstrip('.') or cls.__name__}: {', '.join(names)}"
        )
    data = {k: _with_factory_defaults(fields[k], v) for k, v in data.items()}
    kwargs = {k: _check(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _with_factory_defaults(field: dataclasses.Field, value):
    """A section given in part keeps the defaults its field's factory sets (e.g. the SSL
    configs' ``optim``: a linear schedule, not OptimConfig's own noam): only the keys the
    YAML names are replaced."""
    if isinstance(value, dict) and field.default_factory is not dataclasses.MISSING:
        base = field.default_factory()
        if dataclasses.is_dataclass(base):
            return to_dict(base) | value
    return value


def to_dict(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def apply_override(data: dict, override: str) -> None:
    """``"a.b.c=value"`` sets ``data["a"]["b"]["c"]``; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not key=value (e.g. optim.lr=5e-4)")
    *parents, leaf = key.strip().split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    node[leaf] = yaml.safe_load(raw)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, checked."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return data


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its ``base:`` chain resolved (paths relative to each file)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `base:` files include each other ({' -> '.join(map(str, _seen))})")
    data = read_yaml(path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    return merge(read_config(path.parent / base, (*_seen, path.resolve())), data)


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    data = read_config(path) if path is not None else {}
    for o in overrides:
        apply_override(data, o)
    return from_dict(cls, data)


def save_config(cfg, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["ConfigError", "dataclass", "field", "from_dict", "load_config", "save_config", "to_dict"]
