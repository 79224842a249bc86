"""What a training loop shows besides its logs: TensorBoard event files of its metrics.jsonl rows
and a jax.profiler trace of a few steps.

TensorBoard: `metrics_io.MetricsWriter` hands each row it appends to metrics.jsonl to
`TensorBoardRuns` too, so the event files hold exactly the file's numbers. A stage's runs live
in `<stage dir>/tensorboard/` (a row's `member`, a sweep member's name, picks the sub-folder
`tensorboard/<member>/`), so `tensorboard --logdir W` lists `lm/tensorboard`,
`sae/<name>/tensorboard`, `sweep/<name>/tensorboard/<member>`. On resume metrics.jsonl drops the
rows logged after the checkpoint; the event files are then rebuilt from the rows kept (see
`TensorBoardRuns`), so no reader sees a step twice or a step the resumed run redid.

Profiles: `ProfileWindow` traces `profile_steps` steps of this process's run, after the first
(which compiles), into `<stage dir>/profile/plugins/profile/<time>/<host>.xplane.pb` (what
TensorBoard's profile plugin and XProf open; several processes: `profile/process<i>/`).
"""

from __future__ import annotations

import math
import os
import time

import jax
from absl import logging
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2

from monosem_jax import stage_config

# A row's key naming the run its numbers belong to (a sweep writes one row per member).
RUN_KEY = "member"
_NOT_SCALARS = ("step", "time", RUN_KEY)
_EVENTS = ".tfevents."  # TensorBoard reads every file whose name holds this


def _is_scalar(value) -> bool:
    """A finite plain number (bools, strings, None, lists stay out of TensorBoard)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


class TensorBoardRuns:
    """Scalar event files under `root`: one run folder per `member` (else `root` itself).

    Built from `rows` (the metrics.jsonl rows a resumed run keeps): event files already under
    `root` are removed and the rows written again. A reader that read the old files keeps no
    stale step either: each rebuilt file opens with a SessionLog START at step 0, which makes
    TensorBoard drop what it holds of that run (tensorboardX's purge_step, from step 0). Each
    `write` is flushed, so a killed run's events are on disk up to its last row.
    """

    def __init__(self, root: str | os.PathLike, rows=()):
        self.root = os.fspath(root)
        self._writers = {}
        self._rebuilt = _remove_event_files(self.root)
        for row in rows:
            self.write(row, flush=False)
        self.flush()

    def write(self, row: dict, flush: bool = True) -> None:
        """One metrics.jsonl row ({"step", "time", [member,] name: value, ...}) as one event."""
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in row.items() if k not in _NOT_SCALARS and _is_scalar(v)]
        if not values:
            return
        writer = self._writer(str(row.get(RUN_KEY) or ""))
        writer.write_event(event_pb2.Event(wall_time=float(row.get("time", 0.0)),
                                           step=int(row["step"]),
                                           summary=summary_pb2.Summary(value=values)))
        if flush:
            writer.flush()

    def _writer(self, run: str):
        if run not in self._writers:
            folder = os.path.join(self.root, run) if run else self.root
            os.makedirs(folder, exist_ok=True)
            writer = EventsWriter(os.path.join(folder, "events"), f".{os.getpid()}")
            if self._rebuilt:
                writer.write_event(event_pb2.Event(
                    wall_time=time.time(), step=0,
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
            self._writers[run] = writer
        return self._writers[run]

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _remove_event_files(root: str) -> bool:
    """Removes the event files under `root` (nothing else); whether there were any."""
    found = False
    for folder, _, names in os.walk(root):
        for name in names:
            if _EVENTS in name:
                os.remove(os.path.join(folder, name))
                found = True
    return found


def check_profile_steps(value, field: str = "profile_steps") -> int:
    """`value` as a step count to profile: an integer >= 0 (one clear ValueError otherwise)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    stage_config.check(ok, field, value, "an integer >= 0 (steps traced by jax.profiler; 0 = off)")
    return value


class ProfileWindow:
    """A jax.profiler trace of `num_steps` steps, from the second step this process runs (the
    first compiles) into `log_dir`; 0 steps: nothing.

    The loop calls `before(step)` ahead of dispatching each step and `after(step, outputs)` once
    dispatched: the window's last step's outputs are waited for before the trace stops, so the
    trace holds the steps' device work, not only their dispatch. A window longer than the steps
    left ends with the run. `close()` (or a `with` block) stops a trace an error left open.
    """

    def __init__(self, log_dir: str | os.PathLike, num_steps: int, start_step: int,
                 end_step: int):
        """Steps `start_step`..`end_step - 1` are this process's run (0-based, as dispatched).
        Several processes (jax.distributed) trace each into `log_dir/process<i>`: the trace's
        file is named by host alone, and processes may share a host."""
        self.log_dir = os.fspath(log_dir)
        if jax.process_count() > 1:
            self.log_dir = os.path.join(self.log_dir, f"process{jax.process_index()}")
        self.first = start_step + 1
        self.last = min(self.first + num_steps, end_step) - 1  # inclusive
        self.active = False
        self.enabled = num_steps > 0 and self.last >= self.first
        if num_steps and not self.enabled:
            logging.warning("profile_steps=%d: no step left to profile after the first "
                            "(compiling) one of this run", num_steps)

    def before(self, step: int) -> None:
        if self.enabled and step == self.first:
            os.makedirs(self.log_dir, exist_ok=True)
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after(self, step: int, outputs) -> None:
        if self.active and step == self.last:
            try:
                jax.block_until_ready(outputs)
            finally:
                self.active = False
                jax.profiler.stop_trace()
            # Numbered as the logs and metrics.jsonl number them: steps done.
            logging.info("profile of steps %d..%d written to %s (TensorBoard's profile tab: "
                         "tensorboard --logdir %s; or xprof)", self.first + 1, self.last + 1,
                         self.log_dir, self.log_dir)

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            logging.warning("profile stopped early (the run ended inside the window): %s",
                            self.log_dir)

    def __enter__(self) -> ProfileWindow:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
