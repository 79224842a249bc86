"""Multi-host start-up on JAX's own multi-controller runtime (`jax.distributed`).

Every binary takes the same flags; when any is set (or the standard environment names a
coordinator), `initialize` forms the cluster before the first device is touched:

  --coordinator_address=host:port  (or $JAX_COORDINATOR_ADDRESS)   process 0's address
  --num_processes=N                (or $JAX_NUM_PROCESSES)
  --process_id=i                   (or $JAX_PROCESS_ID)
  --distributed                    JAX's own cluster auto-detection (SLURM, Open MPI, TPU pods)

After it, `jax.devices()` lists every process's devices, the mesh (parallel.make_mesh) spans
them all, and arrays are global. Only process 0 writes summaries, metrics and reports
(`is_primary`); every process may read. A process that dies is noticed by the others through the
runtime's heartbeat (`--heartbeat_timeout_s`) or a failed collective, and they exit with an error
instead of waiting forever.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                        "(multi-host runs; default $JAX_COORDINATOR_ADDRESS).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run "
                         "(default $JAX_NUM_PROCESSES).", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run "
                         "(default $JAX_PROCESS_ID).", flag_values=flag_values)
    flags.DEFINE_bool("distributed", False, "Form a multi-host cluster with JAX's own "
                      "auto-detection (SLURM, Open MPI, TPU pods).", flag_values=flag_values)
    flags.DEFINE_integer("heartbeat_timeout_s", 30, "Seconds after which a silent process is "
                         "declared dead and the others stop.", flag_values=flag_values)


def cluster_args(flag_values: flags.FlagValues) -> dict | None:
    """The `jax.distributed.initialize` arguments the flags and environment ask for, or None."""
    args = {}
    for name, env in _ENV.items():
        value = flag_values[name].value
        if value is None and os.environ.get(env):
            value = os.environ[env]
        if value is not None:
            args[name] = value if name == "coordinator_address" else _int(env, value)
    if not args and not flag_values.distributed:
        return None
    if args and not flag_values.distributed:
        missing = [n for n in _ENV if n not in args]
        if missing:
            raise ValueError(
                f"a multi-host run needs --{' --'.join(missing)} as well (or --distributed for "
                "JAX's cluster auto-detection)"
            )
        if not 0 <= args["process_id"] < args["num_processes"]:
            raise ValueError(f"--process_id={args['process_id']} is not in "
                             f"[0, {args['num_processes']})")
    args["heartbeat_timeout_seconds"] = flag_values.heartbeat_timeout_s
    return args


def _int(env: str, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{env} / its flag must be an integer, got {value!r}") from None


def initialize(flag_values: flags.FlagValues) -> None:
    """Joins the cluster the flags describe (nothing for a single-process run)."""
    args = cluster_args(flag_values)
    if args is None or jax.distributed.is_initialized():
        return
    # CPU devices of several processes talk through gloo (XLA:CPU has no other cross-process
    # collectives); GPUs and TPUs use their own and ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args, initialization_timeout=120)
    if jax.config.jax_compilation_cache_dir and jax.default_backend() == "cpu":
        # A persistent cache shared by the processes of a CPU cluster hands one process's
        # executable to another, and their gloo collectives then wait on each other forever
        # (seen with jax 0.10.2: a 2-process eval that hangs once its programs are cached).
        logging.warning("multi-host CPU run: the persistent compilation cache is off")
        jax.config.update("jax_enable_compilation_cache", False)


def is_multiprocess() -> bool:
    """Whether this process is one of several in a cluster."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the run's shared files (summaries, metrics, reports)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def primary_then_all(name: str, fn, read_result, timeout_s: float = 24 * 3600):
    """`fn()` on process 0 alone (work that writes shared files and needs no other process:
    corpus preparation, the browser, the report); the others wait for it at the runtime's own
    barrier (no device collective, so a long wait is fine) and then `read_result()` what it
    wrote. With one process, just `fn()`."""
    if not is_multiprocess():
        return fn()
    result = fn() if is_primary() else None
    from jax._src import distributed as runtime  # the coordination service's named barrier

    runtime.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
    return result if is_primary() else read_result()
