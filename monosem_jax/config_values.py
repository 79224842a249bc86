"""List-valued config fields, read the one way every stage reads them.

Config files declare list fields as tuples, e.g. `config.hooks = ("blocks.0.hook_resid_post",)`.
ml_collections then parses command-line overrides: `--config.resample_steps=100,200` gives
`(100, 200)`, `--config.hooks=a,b` gives `("a,b",)` (a string tuple keeps the text whole), and
`--config.hooks="('a','b')"` gives `("a", "b")`. The comma strings users already type
(`--config.hooks=a,b`, or a config written before the tuples) are accepted too: every item is
split on commas and stripped, empty items dropped. A bad item is one clear ValueError naming
the field.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


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
