"""One writer per work directory part: advisory locks that die with their holder.

A writer (the pipeline, a stage binary) holds `W/.locks/<part>.lock` while it runs: the whole
pipeline holds "pipeline", each stage the part it writes ("lm", "acts", "sae-<name>", ...), so
two SAEs on one store train side by side but two writers of one SAE run do not. A second
writer gets one line naming the holder's PID, host and command and exits 2 (`WorkdirBusy`, a
user error). Readers (eval, browser, steer, search) take no lock and never wait.

The lock is `fcntl.flock` on the file, so the kernel releases it when the holder dies, SIGKILL
included: a stale lock cannot block anyone. The file keeps the last holder's identity; a new
holder that finds one whose process is gone says it takes the lock over. Under jax.distributed
only process 0 locks (one writer per cluster, the other processes share its run).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
import sys
import time

import jax
from absl import logging

from monosem_jax.errors import WorkdirBusy

LOCK_DIR = ".locks"


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
            "command": " ".join(os.path.basename(a) if i == 0 else a
                                for i, a in enumerate(sys.argv))[:300]}


def _alive(record: dict) -> bool | None:
    """Whether the recorded holder still runs (None: another host, cannot tell)."""
    if record.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _read_record(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        return json.loads(raw.decode()) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return (f"pid {record.get('pid')} on {record.get('host')} "
            f"({record.get('command') or '?'}, since {since})")


def writer(part_of):
    """Decorates a stage function `fn(config, workdir)` to hold the lock of the part it writes,
    `part_of(config)` (e.g. "lm", "sae-topk"), on process 0."""

    def wrap(fn):
        @functools.wraps(fn)
        def locked(config, workdir: str):
            with hold(workdir, part_of(config), enabled=jax.process_index() == 0):
                return fn(config, workdir)

        return locked

    return wrap


@contextlib.contextmanager
def hold(workdir: str, part: str, enabled: bool = True):
    """Holds W/.locks/<part>.lock for the block; WorkdirBusy if another process holds it.

    `enabled=False` (a process other than 0 of a cluster) holds nothing.
    """
    if not enabled:
        yield
        return
    lock_dir = os.path.join(workdir, LOCK_DIR)
    os.makedirs(lock_dir, exist_ok=True)
    path = os.path.join(lock_dir, f"{part}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(
                f"{workdir} is in use: its '{part}' part is being written by "
                f"{_describe(_read_record(fd))}; wait for it to finish or stop it "
                "(readers such as monosem-eval need no lock), or use another --workdir"
            ) from None
        previous = _read_record(fd)
        if previous and previous.get("pid") != os.getpid() and _alive(previous) is False:
            logging.warning("taking over the '%s' lock of %s, which is no longer running "
                            "(it was killed or crashed; its work resumes from its checkpoints)",
                            part, _describe(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder_record()).encode())
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no record; only a killed holder does
    finally:
        os.close(fd)  # closing releases the flock
