"""Typed experiment configs: dataclasses loaded from YAML with dotted overrides.

    >>> cfg = load_config(TrainConfig, "configs/asr/aux.yaml", ["optim.lr=5e-4", "model.encoder.preset=s"])
    >>> save_config(cfg, "exp/run/config.yaml")

Every key is checked before any work starts: an unknown key is an error that
names the valid keys, a value of the wrong type is an error that names the key
and the type wanted. YAML is read with a strict safe loader: configs never run code,
aliases (``*name``) are refused (a few hundred bytes of nested aliases expand to
gigabytes), a key given twice is refused naming both lines, and numbers are read as
users write them (``5e-4`` is a float, as in YAML 1.2, not the string YAML 1.1 makes it).
A config may start from another: ``base: baseline.yaml`` (a path relative to the
file) loads that file first and the rest of this one is merged into it, mappings
key by key, lists and values replaced whole.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechdistill.utils import UsageError, atomic_write_text


class ConfigError(UsageError, ValueError):
    """A config key or value that cannot be used; the message names the key."""


MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; anything near this is not one
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 6, 6, 2


def _show(value) -> str:
    """``repr(value)``, bounded: an error message never echoes a huge value."""
    return _short.repr(value)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases or duplicate keys, with YAML 1.2 floats.
    Written here because no maintained YAML library does all three on PyYAML's types
    (ruamel's YAML 1.2 loader still expands aliases)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{event.start_mark.name}:{event.start_mark.line + 1}: alias *{event.anchor} refused: "
                "configs may not use YAML aliases; write the value out (or use `base:` to share a file)"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}: key {_show(key)} is given twice (lines {seen[key]} and {line}); "
                    "keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver(  # 5e-4, 1E6, -2.5e+3: floats in YAML 1.2, strings in 1.1
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str, name: str = "<string>"):
    """``text`` read with the StrictLoader; ``name`` is what messages call it."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name} is {len(text)} bytes; a config is at most {MAX_CONFIG_BYTES} (is it a config?)")
    loader = StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {e}") from None
    finally:
        loader.dispose()


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
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        (arg,) = typing.get_args(tp)
        return [_check(arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {_show(value)} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {_show(value)}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
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


def config_changes(before: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: old -> new"`` for each dotted key whose value differs between two config
    dicts (lists, such as the taps, compare whole), leaving out the keys in ``ignore``."""

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    old, new = dict(flat(before)), dict(flat(now))
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def finished_run(run_dir: str | Path, cfg, source: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its ``summary.json``) of ``cfg``, read from
    ``source``. A finished run of other settings (an older recipe's, another seed's) is
    refused, naming them: a recipe that kept it would report what it did not make."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        return False
    saved = run_dir / "config.yaml"
    changed = config_changes(read_yaml(saved), to_dict(cfg), ignore=("progress",)) if saved.exists() else []
    if changed:
        raise UsageError(
            f"{run_dir} holds a finished run of other settings than {source} ({'; '.join(changed)}): move it "
            f"aside (or the whole {run_dir.parent}) to make it again"
        )
    return True


def apply_override(data: dict, override: str) -> None:
    """``"a.b.c=value"`` sets ``data["a"]["b"]["c"]``; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {_show(override)} is not key=value (e.g. optim.lr=5e-4)")
    *parents, leaf = key.strip().split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {_show(override)}: {p} is not a section")
    node[leaf] = parse_yaml(raw, f"override {key}")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, checked."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(path)) or {}
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
        raise ConfigError(f"{path}: base must be a file name, got {_show(base)}")
    return merge(read_config(path.parent / base, (*_seen, path.resolve())), data)


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    data = read_config(path) if path is not None else {}
    for o in overrides:
        apply_override(data, o)
    return from_dict(cls, data)


def save_config(cfg, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["ConfigError", "config_changes", "dataclass", "field", "from_dict", "load_config", "save_config", "to_dict"]
