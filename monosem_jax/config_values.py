"""List-valued config fields, declared and read the one way every stage does.

Numeric lists are plain tuples in a config file (`config.resample_steps = (100, 200)`):
ml_collections parses `--config.resample_steps=100,200` into `(100, 200)`. Lists of names are
declared with `names(...)` (`config.hooks = names("blocks.0.hook_resid_post")`): a tuple in the
file, but typed `object`, because ml_collections' tuple parser rejects items such as
`blocks.0.hook_resid_post` or `k=4,8`; so `--config.hooks=a,b` arrives as the string "a,b".
The readers below take either form: every item is split on commas and stripped, empty items
dropped, so tuples, lists, the old comma strings and tuples of comma strings all read the same.
A bad item is one clear ValueError naming the field.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import ml_collections

T = TypeVar("T")


def names(*default: str) -> ml_collections.FieldReference:
    """A config field holding a list of names: the tuple `default`, a comma string accepted."""
    return ml_collections.FieldReference(tuple(default), field_type=object)


def _items(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = (value,)
    elif not isinstance(value, (tuple, list)):
        value = (value,)
    out = []
    for item in value:
        out.extend(part.strip() for part in str(item).split(","))
    return [part for part in out if part]


def _tuple(field: str, value, cast: Callable[[str], T], what: str) -> tuple[T, ...]:
    try:
        return tuple(cast(item) for item in _items(value))
    except ValueError:
        raise ValueError(
            f"config.{field}={value!r} is invalid; valid: {what} (a tuple or comma-separated)"
        ) from None


def str_tuple(field: str, value) -> tuple[str, ...]:
    """('a', 'b'), ['a', 'b'], 'a,b', ('a,b',) -> ('a', 'b')."""
    return _tuple(field, value, str, "names")


def int_tuple(field: str, value) -> tuple[int, ...]:
    """(64, 256), '64,256' -> (64, 256)."""
    return _tuple(field, value, int, "integers")


def float_tuple(field: str, value) -> tuple[float, ...]:
    """(0.5, 1), '0.5,1' -> (0.5, 1.0)."""
    return _tuple(field, value, float, "numbers")
