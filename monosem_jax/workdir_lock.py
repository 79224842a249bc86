"""One writer per work directory part: advisory locks that die with their holder.

A writer (the pipeline, a stage binary) holds `W/.locks/<part>.lock` while it runs: the whole
pipeline holds "pipeline", each stage the part it writes ("lm", "acts", "sae-<name>", ...), so
two SAEs on one store train side by side but two writers of one SAE run do not. A second
writer gets one line naming the holder's PID, host and command and exits 2 (`WorkdirBusy`, a
user error). Readers (eval, browser, steer, search) take no lock and never wait.

The lock is `fcntl.flock` on the file, so the kernel releases it when the holder dies, SIGKILL
included: a stale lock cannot block anyone. A clean exit removes the file; a killed holder's
stays with its identity, and the next holder says it takes that lock over. Under jax.distributed
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

from monosem_jax import atomic_dirs
from monosem_jax.errors import WorkdirBusy

LOCK_DIR = ".locks"


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
            "command": " ".join(os.path.basename(a) if i == 0 else a
                                for i, a in enumerate(sys.argv))[:300]}


def _alive(record: dict) -> bool | None:
    """Whether the recorded holder still runs (None: another host, cannot tell)."""
    return atomic_dirs.process_alive(record.get("host"), record.get("pid"))


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
    created = [d for d in (workdir, lock_dir) if not os.path.isdir(d)]
    os.makedirs(lock_dir, exist_ok=True)
    path = os.path.join(lock_dir, f"{part}.lock")
    fd = _lock(path, workdir, part)
    try:
        previous = _read_record(fd)
        if previous and previous.get("pid") != os.getpid() and _alive(previous) is False:
            logging.warning("taking over the '%s' lock of %s, which is no longer running "
                            "(it was killed or crashed; its work resumes from its checkpoints)",
                            part, _describe(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder_record()).encode())
        os.fsync(fd)
        yield
    finally:
        # A clean exit removes its file while it still holds it (only a killed holder leaves a
        # record), then the folders it made for it: a command that failed leaves no trace.
        os.unlink(path)
        os.close(fd)  # releases the flock
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the stage wrote something, or another lock is held
                pass


def _lock(path: str, workdir: str, part: str) -> int:
    """An fd of `path` holding its flock; WorkdirBusy if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_record(fd))
            os.close(fd)
            raise WorkdirBusy(
                f"{workdir} is in use: its '{part}' part is being written by {holder}; wait for "
                "it to finish or stop it (readers such as monosem-eval need no lock), or use "
                "another --workdir"
            ) from None
        # The last holder unlinks the file as it lets go: a lock on that unlinked file guards
        # nothing, so lock the file now at `path` instead.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
