"""Frozen dataclass configs built from defaults, a YAML file and ``key=value`` overrides, merged once.

Nested dataclass fields are addressed with dots (``model.max_disparity=192``). Values from the
command line are parsed as YAML scalars (``true``, ``1e-3``, ``[128, 256]``), then converted to the
field's declared type; an unknown key or a value of the wrong type raises :class:`ConfigError`
naming the key and the value.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar('T')


class ConfigError(ValueError):
    """A config key or value is not accepted (the message names it)."""


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        errors = []
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f'{key}={value!r}: not any of {annotation}')
    if origin is typing.Literal:
        if value not in arguments:
            raise ConfigError(f'{key}={value!r}: must be one of {list(arguments)}')
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{key}={value!r}: must be a list')
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_convert(item, arguments[0], key) for item in value)
        if len(value) != len(arguments):
            raise ConfigError(f'{key}={value!r}: must have {len(arguments)} items')
        return tuple(_convert(item, kind, key) for item, kind in zip(value, arguments, strict=True))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f'{key}={value!r}: must be a mapping')
        return build(annotation, value, prefix=f'{key}.')  # type: ignore[arg-type]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{key}={value!r}: must be true or false')
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{key}={value!r}: must be an integer')
        return value
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-3' (no dot) as a string; people write it that way.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f'{key}={value!r}: must be a number') from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{key}={value!r}: must be a number')
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f'{key}={value!r}: must be a string')
        return value
    return value


def build(kind: type[T], values: Mapping[str, Any], prefix: str = '') -> T:
    """``kind(**values)`` with nested dataclasses, type conversion and named errors."""
    hints = typing.get_type_hints(kind)
    known = {field.name: field for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f'unknown key(s) {[prefix + name for name in unknown]}; known under '
                          f'{prefix or "the top level"}: {sorted(known)}')
    converted: dict[str, Any] = {}
    for name, value in values.items():
        default = _default_of(known[name])
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            # A section overrides its keys on top of *this* field's default (e.g. TrainConfig's model),
            # not on the section class's own defaults: `model.max_disparity=64` keeps the rest.
            value = merge(to_dict(default), value)
        converted[name] = _convert(value, hints[name], prefix + name)
    try:
        return kind(**converted)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f'{prefix.rstrip(".") or kind.__name__}: {err}') from err


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain dicts/lists (tuples become lists), ready for YAML or JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value
    return plain(dataclasses.asdict(config))  # type: ignore[no-any-return]


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``['a.b=1', 'c=[1, 2]']`` -> ``{'a': {'b': 1}, 'c': [1, 2]}`` (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, separator, text = item.partition('=')
        if not separator or not key:
            raise ConfigError(f'override {item!r}: expected key=value')
        try:
            value = yaml.safe_load(text) if text != '' else ''
        except yaml.YAMLError as err:
            raise ConfigError(f'override {item!r}: value is not valid YAML') from err
        target = nested
        parts = key.split('.')
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f'override {item!r}: {part} is not a section')
        target[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins, sections merge."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(kind: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults <- YAML file (if any) <- overrides, validated into ``kind``."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f'cannot read config file {path}: {err.strerror}') from err
        except yaml.YAMLError as err:
            raise ConfigError(f'config file {path} is not valid YAML: {err}') from err
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f'config file {path} must hold a mapping at the top level')
        values = dict(loaded or {})
    values = merge(values, parse_overrides(overrides))
    return build(kind, values)
