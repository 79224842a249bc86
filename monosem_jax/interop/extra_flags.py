"""A binary's own extra flag beside cli.py's --config and --workdir (--out, --from)."""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

from monosem_jax import cli


def define_path_flag(name: str, help_text: str) -> Callable[[], str | None]:
    """Defines --<name> (a path) on the flags the binary parses; returns a reader of its value.

    Call after cli.define_flags (under cli.run_in_process the binary parses its own FlagValues).
    """
    flag_values = cli.current_flags()
    flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
    return lambda: flag_values[name].value
