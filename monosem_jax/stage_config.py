"""A stage's config boundary: its ConfigDict read once into a frozen dataclass, checked there.

Each stage converts its ConfigDict at its entry with `from_config` (list fields read by
`config_values`); the dataclass's `__post_init__` checks every field with the helpers below, so a
bad value is always one ValueError in the same words, whichever stage raises it (the words of
`config_values`'s errors too):

  config.<field>=<value> is invalid; valid: <what would be>

The stage's body then reads only the dataclass; no ConfigDict reaches `jit`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Iterable

import ml_collections


def from_config(cls, config: ml_collections.ConfigDict, prefix: str = "", **converted):
    """`cls` (a dataclass) from the config's fields `<prefix><field>`; `converted` gives the
    fields read some other way (list fields, nested dataclasses). A field the config lacks
    takes the dataclass's default."""
    values = {
        field.name: config[prefix + field.name]
        for field in dataclasses.fields(cls)
        if field.name not in converted and prefix + field.name in config
    }
    return cls(**values, **converted)


def invalid(field: str, value, valid: str) -> ValueError:
    """The error of a bad value: `config.<field>=<value> is invalid; valid: <valid>`."""
    return ValueError(f"config.{field}={value!r} is invalid; valid: {valid}")


def check(ok: bool, field: str, value, valid: str) -> None:
    """Raises `invalid(field, value, valid)` unless ok."""
    if not ok:
        raise invalid(field, value, valid)


# JAX's integers are int32 (x64 off): a count, size, id or seed at or above this overflows.
INT_LIMIT = 2**31


def number(field: str, value, valid: str):
    """value, a real number: finite, and an integer below INT_LIMIT in magnitude (`valid` says
    what else the field needs, for the error). Returns it."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        check(abs(value) < INT_LIMIT, field, value, f"{valid}, below 2**31")
    else:
        check(isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value), field, value, f"{valid}, a finite number")
    return value


def positive(cfg, names: Iterable[str], prefix: str = "") -> None:
    """Each named field of the dataclass `cfg` is a `number` > 0 (`prefix`: the config's name
    for it)."""
    for name in names:
        value = number(prefix + name, getattr(cfg, name), "> 0")
        check(value > 0, prefix + name, value, "> 0")


def non_negative(cfg, names: Iterable[str], prefix: str = "", note: str = "") -> None:
    """Each named field of the dataclass `cfg` is a `number` >= 0 (`note`: what 0 means, e.g.
    '0 = all')."""
    for name in names:
        valid = f">= 0 ({note})" if note else ">= 0"
        value = number(prefix + name, getattr(cfg, name), valid)
        check(value >= 0, prefix + name, value, valid)


def one_of(field: str, value, choices: Iterable) -> None:
    """value is one of `choices`."""
    choices = tuple(choices)
    check(value in choices, field, value, " | ".join(map(repr, choices)))


_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def path_component(field: str, value, allow_empty: bool = False):
    """value, a name that becomes one folder (a run, a sweep, an import): letters, digits and
    `-_.`, starting with a letter or digit (so never `.`, `..` or hidden), so it can never reach
    outside its parent folder. Returns it."""
    if allow_empty and value == "":
        return value
    check(isinstance(value, str) and bool(_COMPONENT.fullmatch(value)), field, value,
          "a single folder name: 1-128 letters, digits, '-', '_' or '.', starting with a letter "
          "or digit")
    return value


def path_or_spec(field: str, value: str) -> str:
    """value, a path, or a JSON TensorStore kvstore spec when it starts with '{' (which must then
    parse). Returns it."""
    if value.lstrip().startswith("{"):
        try:
            spec = json.loads(value)
        except ValueError as e:
            raise invalid(field, value, f"a path, or a JSON kvstore spec ({e})") from None
        check(isinstance(spec, dict), field, value, "a path, or a JSON kvstore spec (an object)")
    return value
