"""Launching a binary as N real OS processes that form one `jax.distributed` cluster on localhost,
each with its own simulated CPU devices (the multi-host tests' only launcher)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def environment(devices_per_process: int) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process))
    return env


def start(module: str, args: list[str], *, num_processes: int = 2, devices_per_process: int = 4,
          heartbeat_timeout_s: int = 30) -> list[subprocess.Popen]:
    """Starts `python -m module args` as processes 0..N-1 of one cluster.

    The heartbeat timeout (the runtime's default here, 30 s) stays well above the time a failed
    gloo collective takes to surface: a survivor then stops with the binary's own one-line error
    rather than the runtime's abort once the dead peer's heartbeats are missed (which a 10 s
    timeout on a loaded 2-core machine sometimes let come first)."""
    address = f"localhost:{free_port()}"
    procs = []
    for i in range(num_processes):
        cmd = [sys.executable, "-m", module, *args, f"--coordinator_address={address}",
               f"--num_processes={num_processes}", f"--process_id={i}",
               f"--heartbeat_timeout_s={heartbeat_timeout_s}"]
        procs.append(subprocess.Popen(cmd, env=environment(devices_per_process), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def wait(procs: list[subprocess.Popen], timeout: float) -> list[Result]:
    """Each process's exit code and output; kills them all past `timeout` seconds."""
    deadline, results = time.monotonic() + timeout, []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
            raise AssertionError(
                f"multi-host run did not finish in {timeout} s:\n{err[-3000:]}") from None
        results.append(Result(proc.returncode, out, err))
    return results


def run(module: str, args: list[str], *, timeout: float = 240, **kwargs) -> list[Result]:
    """Runs the cluster to the end; every process must exit 0."""
    results = wait(start(module, args, **kwargs), timeout)
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i} exited {r.returncode}:\n{r.stderr[-4000:]}"
    return results
