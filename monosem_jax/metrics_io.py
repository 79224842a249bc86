"""Metrics and summaries on disk: `metrics.jsonl` (resume-aware) and `summary.json`."""

from __future__ import annotations

import json
import math
import os
import time

import jax
from absl import logging

from monosem_jax import config_values, observe, stage_config


def _plain(value):
    """JSON-safe plain Python numbers (no numpy scalars, NaN as null)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Writes JSON via a temporary file and rename, so readers never see half a file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


# Config keys that only watch a run (a profiler trace of a few steps), never change what it
# writes: a rerun or a resume may set them otherwise.
OBSERVATION_KEYS = frozenset({"profile_steps"})


def config_difference(recorded, wanted, prefix: str = "") -> str | None:
    """The first value where a recorded config differs from the wanted one, or None.

    Keys the record lacks are not differences: a newer version added them to the configs, and a
    work directory written before the upgrade stays usable (its record is then rewritten).
    Neither are OBSERVATION_KEYS.
    """
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in sorted(set(recorded) - OBSERVATION_KEYS):
            diff = config_difference(recorded[key], wanted.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if {type(recorded), type(wanted)} == {str, list}:
        # A list field as a comma string (recorded before list fields were tuples, or typed on
        # the command line into an object-typed field such as capture.hooks) and as a list.
        items = [config_values.str_tuple(prefix.rstrip("."), v) for v in (recorded, wanted)]
        if len(items[0]) == len(items[1]) and all(map(_same_item, *items)):
            return None
    if recorded != wanted:
        return f"{prefix.rstrip('.')}: was {recorded!r}, now {wanted!r}"
    return None


def _same_item(a: str, b: str) -> bool:
    """Whether two items of a list field, as text, are the same value (numbers by value)."""
    try:
        return a == b or float(a) == float(b)
    except ValueError:
        return False


def finish_summary(path: str | os.PathLike, summary: dict) -> dict:
    """Writes the stage summary and prints it as the binary's last stdout line."""
    summary = {k: _plain(v) for k, v in summary.items()}
    if jax.process_index() == 0:
        write_json_atomic(path, summary)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def finished_summary(path: str | os.PathLike, what: str) -> dict | None:
    """A finished stage's summary (`path` exists), printed like a fresh one; else None."""
    if not os.path.exists(path):
        return None
    logging.info("%s already finished (%s); nothing to do", what, path)
    return finish_summary(path, read_json(path))


class MetricsWriter:
    """Appends JSON lines; on resume from `resume_step`, drops rows logged after it.

    `tensorboard`: a folder that gets every row as TensorBoard scalars too (observe.py: a row's
    numbers, one run folder per sweep `member`), rebuilt from the rows kept on resume. Process 0
    alone writes. `close()` (or a `with` block) closes the event files.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int = 0,
                 tensorboard: str | os.PathLike | None = None):
        self.path = os.fspath(path)
        self.enabled = jax.process_index() == 0
        self.tensorboard = None
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            kept = [r for r in rows if r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        if tensorboard is not None:
            self.tensorboard = observe.TensorBoardRuns(tensorboard, kept)

    def write(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(row)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LaggedMetrics:
    """Fetches each step's on-device metrics only after the next step is dispatched.

    The device runs one step ahead of the host: `dispatched(step, metrics)` hands the previous
    step's metrics (now computed) to `report(step, host_metrics, steps_per_s, eta)`. Timing starts
    after the first step, which includes compilation.
    """

    def __init__(self, total_steps: int, report):
        self.total_steps, self.report = total_steps, report
        self.pending = None
        self.timed_from, self.timed_steps, self.elapsed = None, 0, 0.0

    @property
    def steps_per_s(self) -> float:
        elapsed = time.time() - self.timed_from if self.timed_from else 0.0
        return self.timed_steps / elapsed if elapsed > 0 else 0.0

    def dispatched(self, step: int, metrics) -> None:
        if self.pending is not None:
            self._report(*self.pending)
        self.pending = (step, metrics)
        if self.timed_from is None:
            jax.block_until_ready(metrics)
            self.timed_from = time.time()
        else:
            self.timed_steps += 1

    def flush(self) -> None:
        if self.pending is not None:
            self._report(*self.pending)
            self.pending = None
        self.elapsed = time.time() - self.timed_from if self.timed_from else 0.0

    def _report(self, step: int, metrics) -> None:
        rate = self.steps_per_s
        eta = format_eta((self.total_steps - step - 1) / rate) if rate > 0 else "?"
        self.report(step, jax.device_get(metrics), rate, eta)


def resolve_sae_name(workdir: str, name: str) -> str:
    """`name`, or for "" the work dir's pipeline SAE (W/pipeline/sae.json), else its only run."""
    if name:
        return stage_config.path_component("sae_name", name)
    recorded = os.path.join(workdir, "pipeline", "sae.json")
    if os.path.exists(recorded):
        sae = read_json(recorded)["sae"]
        return sae.get("name") or sae["variant"]
    sae_dir = os.path.join(workdir, "sae")
    runs = sorted(os.listdir(sae_dir)) if os.path.isdir(sae_dir) else []
    if len(runs) == 1:
        return runs[0]
    raise ValueError(
        f"{workdir} has no pipeline SAE and {len(runs)} SAE runs ({', '.join(runs) or 'none'}); "
        "name one with --config.sae_name"
    )
