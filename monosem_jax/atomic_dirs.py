"""Folders written whole: built in a hidden temporary sibling, then renamed into place.

A SIGKILL skips every `finally`, so a killed writer leaves its temporary folder behind; the
next writer of the same folder removes the ones whose process is dead (on this host) before
it starts its own.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile

from absl import logging


def process_alive(host, pid) -> bool | None:
    """Whether process `pid` of `host` still runs (None: another host, cannot tell)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]


def temp_dir(parent: str, label: str, kind: str = "tmp") -> str:
    """A new hidden folder `<parent>/.<label>.<kind>-<host>-<pid>-<random>` (`parent` made if
    missing), after removing those of this label and kind that a dead process of this host
    left; a live writer's, or another host's, are left alone."""
    os.makedirs(parent, exist_ok=True)
    prefix, host = f".{label}.{kind}-", _host_tag()
    for name in os.listdir(parent):
        fields = name[len(prefix):].split("-") if name.startswith(prefix) else ()
        if (len(fields) == 3 and fields[0] == host and fields[1].isdigit()
                and process_alive(socket.gethostname(), fields[1]) is False):
            logging.info("removing %s, left by a killed writer", os.path.join(parent, name))
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{host}-{os.getpid()}-")
