"""Shared plumbing of the thin absl binaries: flags, clear one-line errors, default configs."""

from __future__ import annotations

import importlib.resources
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from monosem_jax.errors import StoreError

# Errors a user can fix (bad config value, bad input file, NaN loss): one line, exit code 2.
# MONOSEM_DEBUG=1 shows the traceback instead.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, FileExistsError, StoreError)


def default_config(relative: str) -> str:
    """Path of a config file shipped in `monosem_jax.configs`, e.g. 'pipeline/tiny.py'.

    The configs are a subpackage (files that import each other), installed with the wheel, so
    the path resolves the same from an editable install, `pip install .` or a built wheel.
    """
    return str(importlib.resources.files("monosem_jax.configs").joinpath(relative))


def define_flags(default_config_path: str) -> None:
    config_flags.DEFINE_config_file(
        "config", default_config_path, "Config file (path[:arg]).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Work directory holding every stage's outputs.")
    flags.mark_flags_as_required(["workdir"])


class _QuietLibraries:
    """Drops INFO records of Orbax (a dozen lines per checkpoint) and JAX's backend probing
    ("Unable to initialize backend 'tpu'"); warnings still show."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or record.pathname.endswith("xla_bridge.py")
        return record.levelno >= 30 or not noisy


def run(fn) -> None:
    """Runs `fn(config, workdir)` under absl with user errors reported as one clean line."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_QuietLibraries())
        workdir = os.path.abspath(os.path.expanduser(flags.FLAGS.workdir))
        try:
            fn(flags.FLAGS.config, workdir)
        except USER_ERRORS as e:
            if os.environ.get("MONOSEM_DEBUG"):
                raise
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(main)
