"""Typed configs: dataclasses loaded from YAML/JSON with dotted overrides and full validation.

Every run config in llavarad is a dataclass. This module turns a YAML/JSON mapping (plus
``key=value`` overrides from the command line) into such a dataclass, checking every field's
type and ``Literal`` choices, and collecting *all* problems into one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from llavarad.errors import LlavaradError

__all__ = [
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "parse_overrides",
]

T = TypeVar("T")


class ConfigError(LlavaradError, ValueError):
    """One or more config problems; the message lists every one of them."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        head = f"invalid config{f' {source}' if source else ''}:"
        super().__init__(head + "".join(f"\n  - {p}" for p in self.problems))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert ``value`` to type ``tp`` where that is lossless; record a problem otherwise."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, where, problems)
    if origin in (list, tuple, dict):
        return _coerce_container(value, tp, origin, where, problems)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
            return value
        return _build(tp, value, where, problems)
    return _coerce_scalar(value, tp, where, problems)


def _coerce_union(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """``X | None`` and other unions: null where allowed, else the first member that takes ``value``."""
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        problems.append(f"{where}: must not be null (expected {_type_name(tp)})")
        return value
    non_none = [a for a in args if a is not type(None)]
    for arg in non_none:
        trial: list[str] = []
        out = _coerce(value, arg, where, trial)
        if not trial:
            return out
    problems.append(f"{where}: {value!r} does not match {_type_name(tp)}")
    return value


def _coerce_container(value: Any, tp: Any, origin: Any, where: str, problems: list[str]) -> Any:
    """``list[X]`` / ``tuple[X, ...]`` / ``dict[K, V]``: each item coerced to its type, named by its place."""
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        args = get_args(tp)
        item_tp = args[0] if args else Any
        out_list = [_coerce(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(out_list) if origin is tuple else out_list
    if not isinstance(value, dict):  # origin is dict
        problems.append(f"{where}: expected a mapping, got {value!r}")
        return value
    args = get_args(tp)
    val_tp = args[1] if len(args) == 2 else Any
    return {k: _coerce(v, val_tp, f"{where}.{k}", problems) for k, v in value.items()}


def _coerce_scalar(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """bool / int / float / str / Path from YAML or ``key=value`` text, where the conversion is lossless."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            problems.append(f"{where}: expected an integer, got {value!r}")
            return value
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        if number is not None:  # .inf / .nan in YAML: a run would train on NaN and save NaN weights
            problems.append(f"{where}: {value!r} is not a finite number")
            return value
        problems.append(f"{where}: expected a number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        problems.append(f"{where}: expected a path, got {value!r}")
        return value
    return value


def _build(cls: type[T], data: dict[str, Any], where: str, problems: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = [n for n in fields if n.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{where + '.' if where else ''}{key}: unknown field for {cls.__name__}{hint}")
            continue
        kwargs[key] = _coerce(value, hints[key], f"{where + '.' if where else ''}{key}", problems)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{where + '.' if where else ''}{name}: required field is missing")
    if problems:
        return None  # type: ignore[return-value]
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.append(f"{where or cls.__name__}: {exc}")
        return None  # type: ignore[return-value]


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r}: expected KEY=VALUE, e.g. lr=1e-4 or lora.r=16"])
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def config_from_dict(cls: type[T], data: dict[str, Any], source: str | None = None) -> T:
    """Build and validate ``cls`` from a mapping; raise :class:`ConfigError` listing all problems."""
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return obj


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``cls`` from a YAML/JSON file (optional) merged with ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError([f"config file {path} does not exist"], source)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path} is not UTF-8 text (byte {exc.start}); is it a YAML file?"], source) from exc
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"], source) from exc
        try:
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError([f"cannot parse {path}: {exc}"], source) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: top level must be a mapping, got {type(loaded).__name__}"], source)
        data = loaded
    data = _merge(data, parse_overrides(overrides))
    return config_from_dict(cls, data, source)


def config_to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (paths become strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    path = Path(path)
    data = config_to_dict(obj)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
