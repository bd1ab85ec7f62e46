"""The option machinery every verb's config uses (a dataclass field with its help text, which the CLI shows),
and the options of loading a base model, shared by the verbs that load one."""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)


def option(default, help: str, **extra):
    """A dataclass field whose help text the CLI shows. `seed_names`: the original Bactrian-X flags for it, which
    keep working as they are; `old_names`: earlier bactrian names, accepted with a deprecation warning (and
    `old_values`, old name -> value, the same for values of a choice)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "y", "on"), ("0", "false", "no", "n", "off")


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def base_type(hint: Any) -> Any:
    """list[str] -> list, str | None -> str, int -> int."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return base_type(next(arg for arg in typing.get_args(hint) if arg is not type(None)))
    return origin or hint


def read_yaml(path: Path) -> Any:
    """A YAML file's content (safe_load: no tags that construct objects), or a ConfigError naming its line."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:  # a !!python tag is a ConstructorError, one of these
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}: {f'line {mark.line + 1}: ' if mark else ''}not valid YAML ({exc}).") from exc


def config_of(config_cls: type, *layers: tuple[dict[str, Any], str]) -> Any:
    """A config from layers of option values, each a (mapping, where) as `typed_values` takes it, later layers
    overriding earlier ones (the defaults < a YAML file < the flags; a recipe's section < what the recipe fixes).
    The one path from YAML or flags to a config."""
    values: dict[str, Any] = {}
    for mapping, where in layers:
        values.update(typed_values(config_cls, mapping, where))
    return config_cls(**values)


def other_names(config_cls: type) -> dict[str, tuple[str, bool]]:
    """Every seed or old name of `config_cls`'s options: name -> (the option's name, whether it is deprecated)."""
    names = {}
    for spec in dataclasses.fields(config_cls):
        names.update({seed: (spec.name, False) for seed in spec.metadata.get("seed_names", ())})
        names.update({old: (spec.name, True) for old in spec.metadata.get("old_names", ())})
    return names


def _canonical(config_cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` under the options' current names (an old name warns; both names at once is an error)."""
    names = other_names(config_cls)
    renamed: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name, deprecated = names.get(key, (key, False))
        shown = f"{where}: {key}" if where else f"--{key}"
        if name in renamed:
            raise ConfigError(f"{shown}: the option {name} is given twice (as {given_as[name]} and {key}); keep one.")
        if deprecated:
            log.warning("%s is deprecated: it is now %s.", shown, name if where else f"--{name}")
        renamed[name], given_as[name] = value, key
    return renamed


def typed_values(config_cls: type, values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Option values (a YAML mapping, a recipe section; with no `where`, command-line flags), each checked against
    its option's type; errors name the source and key ("recipe.yaml: generate: temperature", "--max_steps")."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of option names to values, got {type(values).__name__}.")
    values = _canonical(config_cls, values, where)
    fields = {spec.name: spec for spec in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(map(str, unknown))}; see --help for the valid "
                          "names.")
    hints = typing.get_type_hints(config_cls)
    return {name: typed_value(value, hints[name], fields[name], f"{where}: {name}" if where else f"--{name}")
            for name, value in values.items()}


def typed_value(value: Any, hint: Any, spec: dataclasses.Field, where: str) -> Any:
    """`value` as the option's type, accepted only when it is that type (or text that spells one): an int for an
    int (3.9 is not 3, true is not 1), a finite number for a float, a list or comma-separated text for a list, a
    scalar for a text option; else a ConfigError naming `where`."""
    kind = base_type(hint)
    if value is None:
        return None
    try:
        converted = _as_kind(value, kind, spec.metadata.get("repeat", False))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    old_values = spec.metadata.get("old_values", {})
    if isinstance(converted, str) and converted in old_values:
        log.warning("%s %s is deprecated: it is now %s.", where, converted, old_values[converted])
        converted = old_values[converted]
    choices = spec.metadata.get("choices")
    if choices and converted not in choices:
        raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(choices)}.")
    return converted


def _as_kind(value: Any, kind: Any, repeat: bool) -> Any:
    got = f"got {value!r} ({type(value).__name__})"
    if kind is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items):
            raise TypeError(f"expected a list of values or comma-separated text, {got}")
        return [str(item) for item in items] if repeat else \
            [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_bool(value)
        raise TypeError(f"expected true or false, {got}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(f"expected an integer, {got}")
    if kind is float:
        number = float(value) if isinstance(value, str) or (isinstance(value, (int, float))
                                                             and not isinstance(value, bool)) else None
        if number is None or not math.isfinite(number):
            raise TypeError(f"expected a finite number, {got}")
        return number
    if isinstance(value, (dict, list, bool)):
        raise TypeError(f"expected text, {got}")
    return kind(value)


@dataclass
class ModelOptions:
    base_model: str = option("default", "Base model: 'default' (embedded Gemma 3 270M), a hub id, a local "
                                        "folder or a .gguf file.")
    load_8bit: bool = option(False, "Load the base model in 8-bit (bitsandbytes; on a CPU "
                                       "too, from bitsandbytes 0.50).")
    load_4bit: bool = option(False, "Load the base model in 4-bit NF4 (bitsandbytes; on a "
                                       "CPU too, from bitsandbytes 0.50): QLoRA when training.")
