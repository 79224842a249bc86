"""Shared plumbing of the thin absl binaries: flags, clear one-line errors, default configs."""

from __future__ import annotations

import dataclasses
import errno
import importlib.resources
import os
import re
import sys
import tempfile
import time
import traceback

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from monosem_jax import distributed
from monosem_jax.errors import CorruptCheckpoint, StoreError, WorkdirBusy

# Errors a user can fix (bad config value, bad input file, NaN loss): one line, exit code 2.
# MONOSEM_DEBUG=1 shows the traceback instead.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, FileExistsError, StoreError,
               WorkdirBusy, CorruptCheckpoint)


def default_config(relative: str) -> str:
    """Path of a config file shipped in `monosem_jax.configs`, e.g. 'pipeline/tiny.py'.

    The configs are a subpackage (files that import each other), installed with the wheel, so
    the path resolves the same from an editable install, `pip install .` or a built wheel.
    """
    return str(importlib.resources.files("monosem_jax.configs").joinpath(relative))


@dataclasses.dataclass
class _InProcess:
    """A `run_in_process` call under way: its command line, its own flags, its exit code."""

    argv: list[str]
    flag_values: flags.FlagValues
    exit_code: int | None = None


_in_process: _InProcess | None = None


def current_flags() -> flags.FlagValues:
    """The flags the binary being run parses (its own under `run_in_process`): where a binary
    defines a flag of its own beside --config and --workdir."""
    return _in_process.flag_values if _in_process else flags.FLAGS


# An error of a binary's --config overrides met while its flags were defined, by FlagValues id.
_definition_error: dict[int, str] = {}
# The default --config file of a binary, by FlagValues id (to name a bad override).
_default_config: dict[int, str] = {}


def _config_file(flag_values: flags.FlagValues, argv: list[str]) -> str:
    """The --config file (path[:arg]) of the command line, else the binary's default."""
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return files[-1] if files else _default_config.get(id(flag_values), "")


def _override_error(flag_values: flags.FlagValues, argv: list[str]) -> str | None:
    """The line for a config that does not take argv's overrides: its file missing, or the
    first `--config.<key>` that names no field (an unknown key, or a key below a leaf such as
    --config.name.x); None when neither (the file itself is broken: its own error is shown)."""
    file = _config_file(flag_values, argv)
    if not os.path.exists(file.split(":", 1)[0]):
        return f"cannot load the --config file {file.split(':', 1)[0]}: no such file"
    try:
        config = ConfigFileFlagParser("config").parse(file)
    except Exception:  # noqa: BLE001 - a file that does not load
        return None
    if not isinstance(config, ml_collections.ConfigDict):
        return None
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            negated_bool = key.startswith("no") and _field_type(config, key[2:]) is bool
            if _field_type(config, key) is None and not negated_bool:  # --config.noflag: False
                return f"bad --config override: the config has no field {key!r}"
    return None


def _field_type(config: ml_collections.ConfigDict, key: str) -> type | None:
    try:
        return config_path.get_type(key, config)
    except Exception:  # noqa: BLE001 - KeyError, TypeError (a key below a leaf), IndexError
        return None


def define_flags(default_config_path: str) -> None:
    flag_values = current_flags()
    _default_config[id(flag_values)] = default_config_path
    try:
        config_flags.DEFINE_config_file(
            "config",
            default_config_path,
            "Config file (path[:arg]).",
            flag_values=flag_values,
            lock_config=True,
            sys_argv=_in_process.argv if _in_process else None,  # where --config.x overrides are
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections reads the --config.<key> overrides of the command line here: an
        # unknown key fails now, before any flag is parsed; reported once the binary runs.
        flags.DEFINE_string("config", None, "Config file (path[:arg]).", flag_values=flag_values)
        _definition_error[id(flag_values)] = (
            _override_error(flag_values, _in_process.argv if _in_process else sys.argv)
            or f"bad --config override: {_first_line(e)}")
    flags.DEFINE_string(
        "workdir", None, "Work directory holding every stage's outputs.", flag_values=flag_values
    )
    flags.mark_flags_as_required(["workdir"], flag_values=flag_values)
    distributed.define_flags(flag_values)


class _QuietLibraries:
    """Drops INFO records of Orbax (a dozen lines per checkpoint) and JAX's backend probing
    ("Unable to initialize backend 'tpu'"); warnings still show."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or record.pathname.endswith("xla_bridge.py")
        return record.levelno >= 30 or not noisy


def _main(fn, flag_values: flags.FlagValues, argv: list[str]) -> int:
    """The binary's body: `fn(config, workdir)`; a user error is one `error:` line and 2."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = os.path.abspath(os.path.expanduser(flag_values.workdir))
    load_error = _config_load_error(flag_values)
    if load_error:
        print(f"error: {load_error}", file=sys.stderr, flush=True)
        return 2
    try:
        distributed.initialize(flag_values)
        fn(flag_values.config, workdir)
    except USER_ERRORS as e:
        if os.environ.get("MONOSEM_DEBUG"):
            raise
        print(f"error: {_first_line(e)}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:
        if os.environ.get("MONOSEM_DEBUG"):
            raise
        if _out_of_space(e):  # the environment, not a bug: free space and run the same command
            print(f"error: no space left on the device ({_first_line(e)}); free some "
                  "space and rerun the same command (finished work is kept)",
                  file=sys.stderr, flush=True)
            return 2
        if not distributed.is_multiprocess():
            # Not a user error: one line still, and the traceback kept in a file for a report.
            where = _save_traceback(workdir)
            print(f"error: unexpected {type(e).__name__}: {_first_line(e)} (a bug or a broken "
                  f"environment; traceback in {where}; MONOSEM_DEBUG=1 shows it here)",
                  file=sys.stderr, flush=True)
            return 1
        # A peer died or hung (a failed collective, the runtime's heartbeat): say so in one line
        # and leave at once; a normal exit would wait on the cluster's shutdown barrier, which
        # the dead peer never reaches, and then abort with pages of runtime logs.
        print(f"error: process {jax.process_index()} of {jax.process_count()}: the cluster "
              f"failed ({_first_line(e)}); rerun the same command on every process to resume "
              "from the last checkpoint", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    return 0


def _out_of_space(e: BaseException) -> bool:
    """A write that failed for a full disk or quota: ENOSPC/EDQUOT, or NumPy's short write
    (`np.save` of an array: "N requested and M written"), which carries no errno."""
    return isinstance(e, OSError) and (
        e.errno in (errno.ENOSPC, errno.EDQUOT)
        or re.fullmatch(r"\d+ requested and \d+ written", str(e)) is not None)


def _save_traceback(workdir: str) -> str:
    """Writes the current exception's traceback to W/logs/ (else the temp dir); its path."""
    text = traceback.format_exc()
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for folder in (os.path.join(workdir, "logs"), tempfile.gettempdir()):
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            with open(path, "w") as f:
                f.write(text)
            return path
        except OSError:  # a full disk or a read-only work dir: try the next folder
            continue
    return "nowhere (no writable folder)"


def _config_load_error(flag_values: flags.FlagValues) -> str | None:
    """Why --config did not load (a missing or broken file, a bad override key), or None.

    ml_collections defers a config file's load error to the config's first use, and an override
    of a key the config lacks fails while the flag is defined; both become one line here.
    """
    if _definition_error.get(id(flag_values)):
        return _definition_error.pop(id(flag_values))
    config = flag_values.config
    error = None if isinstance(config, ml_collections.ConfigDict) else vars(config).get("_error")
    if error is None:
        return None
    path = flag_values["config"].config_filename
    cause = error.__cause__ or error.__context__
    detail = ("no such file" if not os.path.exists(path)
              else _first_line(cause) if cause else _first_line(error))
    return f"cannot load the --config file {path}: {detail}"


def _parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str] | None:
    """The command line parsed; a bad flag or config override (a non-number for an integer
    field, an unknown key, a config file that does not load) is one `error:` line (None)."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        message = _definition_error.pop(id(flag_values), None) or _first_line(e)
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        if "Traceback (most recent call last):" in lines:  # a config file's get_config raised
            message = f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        return None
    except Exception as e:  # an override the --config file lacks; a file that does not compile
        message = (_override_error(flag_values, argv)
                   or f"cannot load the --config file: {type(e).__name__}: {_first_line(e)}")
        print(f"error: {message}", file=sys.stderr, flush=True)
        return None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run(fn) -> None:
    """Runs `fn(config, workdir)` under absl with user errors reported as one clean line."""
    if _in_process:
        flag_values = _in_process.flag_values
        argv = _parse_flags(flag_values, _in_process.argv)
        _in_process.exit_code = 2 if argv is None else _main(fn, flag_values, argv)
        return

    def main(argv):
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_QuietLibraries())
        code = _main(fn, flags.FLAGS, argv)
        if code:
            sys.exit(code)

    def parse(argv):
        parsed = _parse_flags(flags.FLAGS, argv)
        if parsed is None:
            sys.exit(2)
        return parsed

    app.run(main, flags_parser=parse)


def run_in_process(run_main, argv: list[str]) -> int:
    """Runs a binary's `run_main` (e.g. `monosem_jax.sae.main.run_main`) with the command line
    `argv` in this process and returns the exit code the binary would exit with.

    The same flags, config overrides, stage and one-line `error:` report as the binary, on a
    fresh set of flags (the global absl FLAGS are left alone) and without absl's process setup
    (logging levels and handlers stay the caller's), so tests check a binary's messages without
    paying a new process's imports and compiles.
    """
    global _in_process
    if _in_process:
        raise RuntimeError("run_in_process does not nest")
    _in_process = _InProcess(["monosem", *argv], flags.FlagValues())
    try:
        run_main()
        if _in_process.exit_code is None:
            raise RuntimeError(f"{run_main} did not call cli.run")
        return _in_process.exit_code
    finally:
        _in_process = None
