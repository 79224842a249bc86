"""Fault injection: does every binary survive SIGKILL, NaN and a full disk without changing or
losing a result?

Question: killed at any moment (SIGKILL: no clean-up runs) and rerun with the same command, does
the pipeline end with exactly the artifacts of an uninterrupted run, without rewriting anything
a stage had already finished? Likewise a sweep, an export and an import. A NaN in a batch of
every trainer must stop it with one `error:` line (exit 2) naming the step, keeping the last
good checkpoint; a full disk in each stage must be one `error:` line (exit 2), and the same
command must finish once there is room, with the uninterrupted artifacts.

  python experiments/faults.py --kills=50 --stages_min_kills=3          # acceptance, smoke
  python experiments/faults.py --kills=10 --stages_min_kills=1 \
      --config=monosem_jax/configs/pipeline/tiny.py                     # the default pipeline
  python experiments/faults.py --kills=8 --sweep_kills=6 --export_import_kills=2 --nan \
      --full_disk                                                       # every section, short

Pipeline kills. Two uninterrupted runs in the one work directory path W (recorded paths are
part of the artifacts): the first (the control) fills a persistent XLA cache, so later
processes compile nothing, as a rerun would not either, and must equal the second; the second is
the reference, paused (SIGSTOP) at each stage's start line while W is copied: a snapshot of what
a kill at that moment leaves. A trial starts from its target stage's snapshot (--from_scratch:
an empty W), waits for the stage's start line, kills at U(0, the stage's duration) later and
reruns the same command until it exits 0 (3 tries). Targets go to the stage with the fewest
kills so far, so 8k kills hit every stage about k times even where a stage takes 0.3 s of a
50 s run (uniform over the whole run, 50 kills would almost never land in the report stage);
within its stage a kill is uniform. The stage a kill landed in is the process's own last stage
line. Sweep, export and import kills cycle through uniform over the whole run and uniform over
each part of it where output is written (a sweep's training and its members' writing; an
export's or import's temporary folder until the rename).

Compared with the reference (`manifest`, `compare`): every file of W except checkpoints
(compared as parameters: the LM through gpt.artifact.load_trained and every SAE run through
sae.artifact.load_run, bit for bit unless --params_rtol), TensorBoard event files (named by
time and pid; their numbers are metrics.jsonl's, compared), locks and logs; JSON files and
metrics rows without the timing keys (TIMING_KEYS and every `*_s`) and the resume bookkeeping
(RESUME_KEYS); everything else byte for byte (store chunks and COMPLETE checksums, arrays,
PNGs, the browser's files, report.md). A file the reference lacks is a differing artifact,
unless it is a hidden temporary a kill left (LEFTOVER: reported as `leftover_files`).
Bytes of finished output lost: before each rerun the files of every finished unit (a stage's,
an SAE run's, an evaluation's, a store hook's, a sweep's: `finished_units`, by their summary)
are hashed; after it each of those changed or gone counts its bytes.

Prints one JSON object last (a section per fault kind, and `ok`); exit 1 when not ok.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "monosem_jax/configs/pipeline/tiny.py:smoke"
STAGES = ("corpus", "lm", "acts", "sae", "eval", "browser", "compare", "report")
STAGE_LINE = re.compile(r"=== stage (\d+)/(\d+): (\w+) ===")

# Keys whose values are wall-clock measurements (they differ between any two runs).
TIMING_KEYS = frozenset({"time", "write_overhead_ratio"})  # plus every key ending in "_s"
# Keys that describe how a process got to the end, not what it made: where a resumed run
# resumed, and how many step programs this process compiled (a run resumed after the TopK
# k-anneal compiles only the settled step: 1 where an uninterrupted run says 2).
RESUME_KEYS = frozenset({"resumed_from_step", "resumed_from_row", "step_compilations"})
# Paths (relative to W) not compared as files, and why: see the module docstring.
SKIPPED_PARTS = (".locks", "logs", "tensorboard", "checkpoints", "profile")
# Files a killed writer can leave that no reader ever sees: hidden temporary folders (a
# dataset's `.data.tmp-*`, an import's `.sae-import-*`), TensorStore's `<chunk>.__lock` and an
# atomic JSON write's `<file>.tmp<pid>`. Reported as leftovers, not as differing artifacts.
LEFTOVER = re.compile(r"(^|/)\.[^/]+|\.__lock$|\.tmp\d+$")


def is_excluded_key(key: str) -> bool:
    return key in TIMING_KEYS or key in RESUME_KEYS or key.endswith("_s")


# ----------------------------------------------------------------------------- processes


def binary(name: str) -> str:
    """A console script of this venv (beside the running python), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else shutil.which(name) or name


def child_env(xla_cache: str | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env.pop("MONOSEM_DEBUG", None)  # user errors must be the one-line kind
    if xla_cache:
        env.update(JAX_COMPILATION_CACHE_DIR=xla_cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


class Proc:
    """A binary run as a subprocess whose stderr lines are read (and timed) as they come."""

    def __init__(self, cmd: list[str], env: dict, on_line=None):
        self.cmd = cmd
        self.t0 = time.monotonic()
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env, text=True, errors="replace")
        self.lines: list[tuple[float, str]] = []
        self.stages: list[tuple[float, str]] = []  # (seconds since start, stage) as logged
        self.stdout = ""
        self._on_line = on_line
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._read_out, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_err(self):
        for line in self.popen.stderr:
            t = time.monotonic() - self.t0
            match = STAGE_LINE.search(line)
            with self._changed:
                self.lines.append((t, line.rstrip("\n")))
                if match:
                    self.stages.append((t, match.group(3)))
                self._changed.notify_all()
            if self._on_line:
                self._on_line(self, line)
        with self._changed:
            self._changed.notify_all()

    def _read_out(self):
        self.stdout = self.popen.stdout.read()

    @property
    def stage(self) -> str | None:
        """The stage last started (None before the first)."""
        return self.stages[-1][1] if self.stages else None

    def wait_for(self, predicate, timeout: float) -> bool:
        """Waits until predicate(self) holds (True) or the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._threads[0].is_alive()):
                    return predicate(self)
                self._changed.wait(min(left, 0.05))
        return True

    def kill(self) -> bool:
        """SIGKILL; True when the process was still running."""
        if self.popen.poll() is not None:
            return False
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()
        return True

    def finish(self, timeout: float) -> int:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = -9
        self.wall_s = time.monotonic() - self.t0
        for t in self._threads:
            t.join(10)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def error_lines(self) -> list[str]:
        return [line for _, line in self.lines if line.startswith("error:")]


def run(cmd: list[str], env: dict, timeout: float = 3600) -> Proc:
    proc = Proc(cmd, env)
    proc.finish(timeout)
    return proc


def keep_log(folder: str, name: str, proc: Proc) -> str:
    """Writes a process's whole stderr to folder/name (for a failure's details; --keep)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f"$ {' '.join(proc.cmd)}\nexit {proc.popen.returncode}\n{proc.stderr}\n")
    return path


def tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ----------------------------------------------------------------------------- artifacts


def strip_excluded(obj):
    """A JSON value without the timing and resume keys (at any depth)."""
    if isinstance(obj, dict):
        return {k: strip_excluded(v) for k, v in obj.items() if not is_excluded_key(k)}
    if isinstance(obj, list):
        return [strip_excluded(v) for v in obj]
    return obj


def _skipped(rel: str) -> bool:
    parts = rel.split(os.sep)
    return any(p in SKIPPED_PARTS for p in parts)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_entry(path: str, rel: str):
    name = os.path.basename(rel)
    if name.endswith(".json") or name in ("COMPLETE", "progress"):
        try:
            with open(path) as f:
                return ("json", strip_excluded(json.load(f)))
        except ValueError:
            pass  # not JSON after all: compared as bytes
    if name.endswith(".jsonl"):
        with open(path) as f:
            return ("jsonl", [strip_excluded(json.loads(line)) for line in f if line.strip()])
    return ("sha256", _sha256(path))


def files_of(workdir: str, under: str = "") -> list[str]:
    """Relative paths of the files below workdir/under, outside SKIPPED_PARTS."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(workdir, under)):
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), workdir)
            if not _skipped(rel):
                out.append(rel)
    return out


def _flat_params(tree) -> dict[str, np.ndarray]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def trained_params(workdir: str, under: tuple[str, ...] = ("",)) -> dict[str, dict]:
    """{"lm": ..., "sae/<name>": ...}: the parameters of the LM and of every SAE run with a
    summary, of those inside the folders `under` ("" = all of W)."""
    from monosem_jax.gpt import artifact as gpt_artifact
    from monosem_jax.sae import artifact as sae_artifact

    def wanted(name):
        return any(not u or name == u.rstrip("/") or name.startswith(u.rstrip("/") + "/")
                   for u in under)

    out = {}
    if wanted("lm") and os.path.exists(os.path.join(workdir, "lm", "summary.json")):
        out["lm"] = _flat_params(gpt_artifact.load_trained(workdir)[1])
    sae_root = os.path.join(workdir, "sae")
    for name in sorted(os.listdir(sae_root)) if os.path.isdir(sae_root) else ():
        if wanted(f"sae/{name}") and os.path.exists(os.path.join(sae_root, name, "summary.json")):
            sae = sae_artifact.load_run(os.path.join(sae_root, name))
            out[f"sae/{name}"] = _flat_params(sae.params)
    return out


def manifest(workdir: str, under: tuple[str, ...] = ("",), params: bool = True) -> dict:
    """What is compared of a work directory (or of some folders of it)."""
    entries = {rel: _file_entry(os.path.join(workdir, rel), rel)
               for part in under for rel in files_of(workdir, part)}
    if params:
        for name, arrays in trained_params(workdir, under).items():
            entries[f"params:{name}"] = ("params", arrays)
    return entries


def _params_difference(ref: dict, got: dict, rtol: float) -> tuple[bool, float]:
    """(equal within rtol, the largest |difference| / max(|ref|) of any array)."""
    if ref.keys() != got.keys():
        return False, float("inf")
    worst, equal = 0.0, True
    for key, a in ref.items():
        b = got[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, float("inf")
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        worst = max(worst, diff / max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-30))
        equal &= bool(np.array_equal(a, b)) or (rtol > 0 and np.allclose(b, a, rtol=rtol, atol=0))
    return equal, worst


def _json_paths_differing(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k} (only in {'reference' if k in a else 'this run'})")
            else:
                out += _json_paths_differing(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [] if len(a) == len(b) else [f"{path}: {len(a)} items != {len(b)}"]
        return out + [p for i, (x, y) in enumerate(zip(a, b, strict=False))
                      for p in _json_paths_differing(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]


def compare(ref: dict, got: dict, params_rtol: float = 0.0) -> tuple[list[dict], float]:
    """(the artifacts that differ, each {artifact, how}; the largest relative parameter
    difference seen, 0.0 when every parameter is bit-identical). Extra files that match
    LEFTOVER are not in it: see `leftovers`."""
    differing, worst = [], 0.0
    for key in sorted(set(ref) | set(got)):
        if key not in got:
            differing.append({"artifact": key, "how": "missing"})
        elif key not in ref:
            if not LEFTOVER.search(key):
                differing.append({"artifact": key, "how": "extra (not in the reference)"})
        elif ref[key][0] == "params" and got[key][0] == "params":
            equal, rel = _params_difference(ref[key][1], got[key][1], params_rtol)
            worst = max(worst, rel)
            if not equal:
                differing.append({"artifact": key, "how": f"max relative difference {rel:.3g}"})
        elif ref[key] != got[key]:
            how = ("bytes differ" if ref[key][0] == "sha256" else
                   "; ".join(_json_paths_differing(ref[key][1], got[key][1])[:5]))
            differing.append({"artifact": key, "how": how or "type differs"})
    return differing, worst


def leftovers(ref: dict, workdir: str) -> list[str]:
    """Files of W that the reference lacks and that match LEFTOVER (temporaries a kill left)."""
    return [rel for rel in files_of(workdir) if rel not in ref and LEFTOVER.search(rel)]


# ----------------------------------------------------------------------------- finished output


def finished_units(workdir: str) -> dict[str, list[str]]:
    """{unit: its paths relative to W} for every unit of work whose completion marker exists:
    a stage's folder, an SAE run, an evaluation, a store hook, a sweep. Once finished, none of
    these may change."""
    def exists(rel):
        return os.path.exists(os.path.join(workdir, rel))

    units = {}
    fixed = {"corpus": ("corpus/summary.json", ["corpus", "data", "tokenizer.json"]),
             "lm": ("lm/summary.json", ["lm"]),
             "acts": ("acts/summary.json", ["acts/summary.json"]),
             "browser": ("browser/summary.json", ["browser"]),
             "compare": ("compare/summary.json", ["compare"]),
             "report": ("report/summary.json", ["report", "report.md"])}
    for unit, (marker, paths) in fixed.items():
        if exists(marker):
            units[unit] = paths
    for folder, marker in (("acts", "summary.json"), ("sae", "summary.json"),
                           ("sweep", "summary.json")):
        root = os.path.join(workdir, folder)
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
            if exists(os.path.join(folder, name, marker)):
                units[f"{folder}/{name}"] = [f"{folder}/{name}"]
    eval_root = os.path.join(workdir, "eval")
    for name in sorted(os.listdir(eval_root)) if os.path.isdir(eval_root) else ():
        if name.endswith(".json"):
            sae = name[: -len(".json")]
            units[f"eval/{sae}"] = [f"eval/{name}", f"eval/{sae}_density.png",
                                    f"eval/{sae}_features.npz"]
    return units


def finished_files(workdir: str) -> dict[str, tuple[int, str]]:
    """{path: (bytes, sha256)} of every file of every finished unit (checkpoints included)."""
    out = {}
    for paths in finished_units(workdir).values():
        for rel in paths:
            full = os.path.join(workdir, rel)
            if os.path.isfile(full):
                out[rel] = (os.path.getsize(full), _sha256(full))
            for dirpath, _, filenames in os.walk(full) if os.path.isdir(full) else ():
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if "/.locks/" not in path:
                        out[os.path.relpath(path, workdir)] = (os.path.getsize(path),
                                                               _sha256(path))
    return out


def lost(before: dict[str, tuple[int, str]], workdir: str) -> tuple[int, list[str]]:
    """(bytes, paths) of the finished files of `before` now changed or gone."""
    nbytes, paths = 0, []
    for rel, (size, digest) in sorted(before.items()):
        full = os.path.join(workdir, rel)
        if not os.path.isfile(full) or _sha256(full) != digest:
            nbytes += size
            paths.append(rel + ("" if os.path.isfile(full) else " (gone)"))
    return nbytes, paths


# ----------------------------------------------------------------------------- the pipeline


class Workspace:
    """The scratch folder: W (the one path every run uses), the XLA cache, references."""

    def __init__(self, root: str, xla_cache: bool = True):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.workdir = os.path.join(self.root, "w")
        self.env = child_env(os.path.join(self.root, "xla-cache") if xla_cache else None)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def reset(self, source: str | None = None) -> str:
        """Empties W (a mount point stays, emptied) and copies `source` into it."""
        clear(self.workdir)
        if source:
            shutil.copytree(source, self.workdir, symlinks=True, dirs_exist_ok=True)
        return self.workdir

    def keep(self, name: str) -> str:
        """Moves W's content to root/name (replacing it) and returns that path."""
        dest = self.path(name)
        shutil.rmtree(dest, ignore_errors=True)
        if os.path.ismount(self.workdir):
            shutil.copytree(self.workdir, dest, symlinks=True)
        else:
            os.rename(self.workdir, dest)
        return dest


def clear(path: str) -> None:
    """Removes a folder's content (and the folder, unless it is a mount point)."""
    if not os.path.exists(path):
        return
    if not os.path.ismount(path):
        shutil.rmtree(path)
        return
    for name in os.listdir(path):
        full = os.path.join(path, name)
        shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)


def pipeline_cmd(workdir: str, config: str, *extra: str) -> list[str]:
    path, sep, arg = config.partition(":")
    if not os.path.isabs(path) and not os.path.exists(path):  # run from another folder
        path = os.path.join(REPO, path)
    return [binary("monosem-pipeline"), f"--workdir={workdir}",
            f"--config={os.path.abspath(path)}{sep}{arg}", *extra]


def stage_seconds(proc: Proc, end: float, pauses: dict[str, float] | None = None) -> dict:
    """Each stage's duration from its start line to the next one's (the last: to `end`),
    less the time it was paused."""
    out = {}
    marks = proc.stages + [(end, None)]
    for (t, name), (t_next, _) in zip(marks, marks[1:], strict=False):
        out[name] = max(t_next - t - (pauses or {}).get(name, 0.0), 0.0)
    return out


def reference_runs(ws: Workspace, config: str, control: bool = True,
                   timeout: float = 7200) -> dict:
    """The uninterrupted runs: the control (fills the XLA cache) and the reference, snapshot at
    each stage's start line. Returns {manifest, snapshots, seconds, wall_s, control_differing}."""
    cmd = pipeline_cmd(ws.workdir, config)
    out = {}
    if control:
        ws.reset()
        proc = run(cmd, ws.env, timeout)
        if proc.popen.returncode != 0:
            raise RuntimeError(f"the control run failed: {tail(proc.stderr)}")
        out["control_wall_s"] = round(time.monotonic() - proc.t0, 1)
        control_dir = ws.keep("control")
    ws.reset()
    snapshots, pauses = {STAGES[0]: None}, {}

    def snapshot(p: Proc, line: str):
        match = STAGE_LINE.search(line)
        if not match or match.group(3) == STAGES[0]:
            return
        t = time.monotonic()
        p.popen.send_signal(signal.SIGSTOP)  # every thread stops: W is what a kill would leave
        try:
            dest = ws.path("snapshots", match.group(3))
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(ws.workdir, dest, symlinks=True)
            snapshots[match.group(3)] = dest
        finally:
            p.popen.send_signal(signal.SIGCONT)
        pauses[match.group(3)] = time.monotonic() - t

    proc = Proc(cmd, ws.env, on_line=snapshot)
    rc = proc.finish(timeout)
    end = time.monotonic() - proc.t0
    if rc != 0:
        raise RuntimeError(f"the reference run failed: {tail(proc.stderr)}")
    out["seconds"] = stage_seconds(proc, end, pauses)
    out["wall_s"] = round(end - sum(pauses.values()), 1)
    out["snapshots"] = snapshots
    out["dir"] = ws.keep("reference")
    out["manifest"] = manifest(out["dir"])
    if control:
        differing, worst = compare(out["manifest"], manifest(control_dir))
        out["control_differing"] = differing
        out["control_params_max_rel_diff"] = worst
        shutil.rmtree(control_dir)
    return out


def _next_target(counts: collections.Counter, rng: np.random.Generator) -> str:
    fewest = min(counts[s] for s in STAGES)
    return str(rng.choice([s for s in STAGES if counts[s] == fewest]))


def kill_pipeline(ws: Workspace, ref: dict, target: str, rng: np.random.Generator,
                  seconds: dict, config: str, from_scratch: bool = False,
                  max_reruns: int = 3, params_rtol: float = 0.0, timeout: float = 7200) -> dict:
    """One trial: start at the target stage's snapshot, SIGKILL at a uniform moment of the
    stage, rerun until exit 0, compare with the reference. Returns the trial's record."""
    ws.reset(None if from_scratch else ref["snapshots"][target])
    cmd = pipeline_cmd(ws.workdir, config)
    offset = float(rng.uniform(0.0, seconds[target]))
    proc = Proc(cmd, ws.env)
    started = proc.wait_for(lambda p: target in [s for _, s in p.stages], timeout)
    record = {"target": target, "offset_s": round(offset, 3)}
    if not started:
        proc.kill()
        proc.finish(10)
        return {**record, "failure": f"stage {target} never started (exit "
                                     f"{proc.popen.returncode}): {tail(proc.stderr)}"}
    t_stage = next(t for t, s in proc.stages if s == target)
    proc.wait_for(lambda p: False, max(t_stage + offset - (time.monotonic() - proc.t0), 0))
    stage_at_kill = proc.stage
    if not proc.kill():
        rc = proc.finish(10)
        if rc != 0:
            return {**record, "failure": f"exit {rc} before the kill: {tail(proc.stderr)}"}
        return {**record, "missed": True}  # it finished first: no kill
    proc.finish(10)
    record["stage"] = stage_at_kill
    # Killed past its target: how long the target stage took in this run, for the next draws.
    record["target_stage_s"] = stage_duration(proc.stages, target)
    record["killed_at_s"] = round(time.monotonic() - proc.t0, 2)
    record["finished_units_at_kill"] = sorted(finished_units(ws.workdir))
    record.update(_rerun_and_compare(ws, cmd, ref["manifest"], params_rtol,
                                     max_reruns=max_reruns))
    return record


def stage_duration(stages: list[tuple[float, str]], stage: str) -> float | None:
    """Seconds from `stage`'s line to the next stage's line in a run's (time, stage) lines;
    None when the run never got past it."""
    names = [s for _, s in stages]
    i = names.index(stage) if stage in names else len(names)
    return stages[i + 1][0] - stages[i][0] if i + 1 < len(names) else None


def pipeline_kills(ws: Workspace, kills: int, seed: int, config: str, from_scratch: bool = False,
                   params_rtol: float = 0.0, control: bool = True, max_reruns: int = 3) -> dict:
    """The --kills section: `kills` SIGKILLs of the pipeline, each followed by reruns."""
    t0 = time.monotonic()
    ref = reference_runs(ws, config, control)
    rng = np.random.default_rng(seed)
    # A stage's duration: the reference's, replaced by the median of whole runs of it in
    # reruns once there are some (the reference's first run of a program compiled it; later
    # processes load it from the XLA cache, as every rerun does), and by its duration in a
    # trial whose kill, drawn over the longer one, landed in a later stage (a machine less
    # loaded than during the reference: the first stage, never rerun whole, would be missed
    # forever).
    observed = collections.defaultdict(list)
    counts, trials, misses = collections.Counter(), [], 0
    while sum(counts.values()) < kills and misses < 10 * kills:
        target = _next_target(counts, rng)
        seconds = {s: statistics.median(observed[s]) if observed[s] else ref["seconds"][s]
                   for s in STAGES}
        record = kill_pipeline(ws, ref, target, rng, seconds, config, from_scratch,
                               max_reruns, params_rtol)
        if record.get("missed"):
            misses += 1
            continue
        trials.append(record)
        if "stage" in record:
            counts[record["stage"]] += 1
        logging.warning("kill %d/%d in %s (target %s, +%.2fs): %s", len(trials), kills,
                        record.get("stage"), target, record["offset_s"],
                        "ok" if _trial_ok(record) else "FAILED")
        if record.get("target_stage_s") is not None and record.get("stage") != target:
            observed[target].append(record["target_stage_s"])
        rerun_seconds = record.get("rerun_seconds", {})
        for later in STAGES[STAGES.index(record.get("stage") or target) + 1:]:
            if later in rerun_seconds:
                observed[later].append(rerun_seconds[later])
    failures = [{k: v for k, v in r.items() if k != "rerun_seconds"}
                for r in trials if not _trial_ok(r)]
    return {
        "config": config,
        "kills": sum(counts.values()),
        "kills_per_stage": {s: counts[s] for s in STAGES},
        "missed_draws": misses,
        "recoveries": sum(bool(r.get("recovered")) for r in trials),
        "reruns": sum(r.get("reruns", 0) for r in trials),
        "artifacts_differing": sum(len(r.get("artifacts_differing", ())) for r in trials),
        "bytes_lost": sum(r.get("bytes_lost", 0) for r in trials),
        "params_max_rel_diff": max([r.get("params_max_rel_diff", 0.0) for r in trials] or [0.0]),
        "leftover_files": sorted({f for r in trials for f in r.get("leftovers", ())}),
        "failures": failures,
        "reference_wall_s": ref["wall_s"],
        "reference_stage_s": {s: round(v, 2) for s, v in ref["seconds"].items()},
        "control_differing": ref.get("control_differing"),
        "trials": [_brief(r) for r in trials],
        "wall_s": round(time.monotonic() - t0, 1),
        "_reference": ref,
    }


def _brief(record: dict) -> dict:
    return {k: record[k] for k in ("target", "stage", "offset_s", "reruns") if k in record}



# ----------------------------------------------------------------------------- finished W, tools


def config_path(relative: str) -> str:
    """Absolute path of a config shipped in the package (binaries may run from any folder)."""
    from monosem_jax import cli

    return cli.default_config(relative)


def wait_until(proc: Proc, condition, timeout: float, poll: float = 0.001) -> float | None:
    """Polls `condition()` until it holds (the seconds since the process started) or the process
    ends or time runs out (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic() - proc.t0
        if proc.popen.poll() is not None:
            return None
        time.sleep(poll)
    return None


def killed_run(cmd, env, rng, i: int, total: float, windows, spread: float = 1.0) -> dict:
    """Starts `cmd` and SIGKILLs it. Trial i of a cycle of 1 + len(windows) kills uniformly
    over the whole run (`total` seconds, the reference's), then once in each of `windows`:
    (name, marker(proc) -> bool, seconds) = uniform over `spread` x seconds after the marker
    holds (the part of the run where the writing happens)."""
    mode = i % (1 + len(windows))
    proc = Proc(cmd, env)
    if mode == 0:
        how, start, offset = "run", 0.0, float(rng.uniform(0.0, total))
    else:
        how, marker, seconds = windows[mode - 1]
        offset = float(rng.uniform(0.0, spread * seconds + 0.002))
        start = wait_until(proc, lambda: marker(proc), 600)
        if start is None:
            proc.finish(600)
            return {"how": how, "missed": True, "exit": proc.popen.returncode}
    proc.wait_for(lambda p: False, max(start + offset - (time.monotonic() - proc.t0), 0.0))
    killed = proc.kill()
    proc.finish(10)
    return {"how": how, "offset_s": round(offset, 4), "killed": killed,
            "missed": not killed, "exit": None if killed else proc.popen.returncode,
            "proc": proc}


# ----------------------------------------------------------------------------- sweeps


def sweep_cmd(workdir: str, *extra: str) -> list[str]:
    return [binary("monosem-sweep"), f"--workdir={workdir}",
            f"--config={config_path('sae/default.py')}:smoke", *extra]


FINAL_SWEEP_STEP = re.compile(r"sweep step (\d+)/\1 ")  # the last step's line: 40/40


def _sweep_phase(proc: Proc) -> str:
    """Where the sweep was: setting up, training, or writing its members (after the last
    step's line)."""
    text = proc.stderr
    if "members, strategy" not in text:
        return "setup"
    return "members" if FINAL_SWEEP_STEP.search(text) else "training"


def sweep_kills(ws: Workspace, base: str, kills: int, seed: int,
                params_rtol: float = 0.0) -> dict:
    """The --sweep_kills section: monosem-sweep (the smoke grid) on a finished smoke W."""
    t0 = time.monotonic()
    ws.reset(base)
    ref_proc = run(sweep_cmd(ws.workdir), ws.env)
    if ref_proc.popen.returncode != 0:
        raise RuntimeError(f"the uninterrupted sweep failed: {tail(ref_proc.stderr)}")
    total = ref_proc.wall_s
    setup = next((t for t, line in ref_proc.lines if "members, strategy" in line), total)
    trained = next((t for t, line in ref_proc.lines if FINAL_SWEEP_STEP.search(line)), total)
    windows = [("training", lambda p: "members, strategy" in p.stderr, trained - setup),
               ("members", lambda p: FINAL_SWEEP_STEP.search(p.stderr) is not None,
                total - trained)]
    ref_dir = ws.keep("sweep-reference")
    ref = manifest(ref_dir)
    rng = np.random.default_rng(seed + 1)
    trials, misses = [], 0
    while len(trials) < kills and misses < 10 * kills + 10:
        ws.reset(base)
        done = killed_run(sweep_cmd(ws.workdir), ws.env, rng, len(trials), total, windows)
        if done["missed"]:
            misses += 1
            continue
        record = {"how": done["how"], "offset_s": done["offset_s"],
                  "phase": _sweep_phase(done["proc"])}
        record.update(_rerun_and_compare(ws, sweep_cmd(ws.workdir), ref, params_rtol))
        trials.append(record)
        logging.warning("sweep kill %d/%d (%s): %s", len(trials), kills, record["phase"],
                        "ok" if _trial_ok(record) else record)
    return _section(trials, misses, t0, reference_wall_s=round(total, 1),
                    kills_per_phase=dict(collections.Counter(r["phase"] for r in trials)))


def _rerun_and_compare(ws: Workspace, cmd: list[str], ref: dict, params_rtol: float,
                       under: tuple[str, ...] = ("",), max_reruns: int = 3) -> dict:
    """After a kill: hash the finished units, rerun until exit 0, compare with `ref`."""
    before = finished_files(ws.workdir)
    reruns = []
    for _ in range(max_reruns):
        reruns.append(run(cmd, ws.env))
        if reruns[-1].popen.returncode == 0:
            break
    record = {"reruns": len(reruns), "recovered": reruns[-1].popen.returncode == 0}
    if reruns[-1].stages and record["recovered"]:  # a pipeline: how long each stage took
        record["rerun_seconds"] = stage_seconds(reruns[-1], reruns[-1].wall_s)
    failures = [{"exit": p.popen.returncode, "stderr": tail(p.stderr),
                 "log": keep_log(ws.path("logs"), f"rerun-{time.time():.3f}.txt", p)}
                for p in reruns if p.popen.returncode != 0]
    if failures:
        record["rerun_failures"] = failures
    record["bytes_lost"], record["lost_files"] = lost(before, ws.workdir)
    differing, worst = compare(ref, manifest(ws.workdir, under), params_rtol)
    record["artifacts_differing"], record["params_max_rel_diff"] = differing, worst
    if under == ("",):
        record["leftovers"] = leftovers(ref, ws.workdir)
    return record


def _trial_ok(record: dict) -> bool:
    return bool(record.get("recovered", True) and not record.get("artifacts_differing")
            and not record.get("bytes_lost") and not record.get("failure")
            and not record.get("rerun_failures"))


def _section(trials: list[dict], misses: int, t0: float, **extra) -> dict:
    return {
        "kills": len(trials),
        "missed_draws": misses,
        "recoveries": sum(bool(r.get("recovered", True)) for r in trials),
        "artifacts_differing": sum(len(r.get("artifacts_differing", ())) for r in trials),
        "bytes_lost": sum(r.get("bytes_lost", 0) for r in trials),
        "params_max_rel_diff": max([r.get("params_max_rel_diff", 0.0) for r in trials] or [0.0]),
        "leftover_files": sorted({f for r in trials for f in r.get("leftovers", ())}),
        **extra,
        "failures": [r for r in trials if not _trial_ok(r)],
        "wall_s": round(time.monotonic() - t0, 1),
    }


# ----------------------------------------------------------------------------- export / import


def _temp_siblings(folder: str, prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(prefix)) \
        if os.path.isdir(folder) else []


def export_import_kills(ws: Workspace, base: str, kills: int, seed: int,
                        params_rtol: float = 0.0) -> dict:
    """The --export_import_kills section: SIGKILL monosem-export and monosem-import.

    Afterwards the output is either complete and equal to an uninterrupted one, or absent (and
    a rerun makes it); never a half folder under the final name. Temporary folders a kill left
    (invisible: `.<out>.tmp-*` beside an export, `W/.sae-import-*`) are counted, before and
    after the rerun (which removes them).
    """
    t0 = time.monotonic()
    out_dir = ws.path("export", "out")
    export = [binary("monosem-export"), f"--workdir={ws.workdir}", f"--out={out_dir}"]
    imported = os.path.join(ws.workdir, "sae", "imp")
    ws.reset(base)
    shutil.rmtree(ws.path("export"), ignore_errors=True)
    ref_export = run(export, ws.env)
    if ref_export.popen.returncode != 0:
        raise RuntimeError(f"the uninterrupted export failed: {tail(ref_export.stderr)}")
    export_ref_dir = ws.path("export-reference")
    shutil.rmtree(export_ref_dir, ignore_errors=True)
    os.rename(out_dir, export_ref_dir)
    import_cmd = [binary("monosem-import"), f"--workdir={ws.workdir}",
                  f"--from={export_ref_dir}", "--config.name=imp"]
    ref_import = run(import_cmd, ws.env)
    if ref_import.popen.returncode != 0:
        raise RuntimeError(f"the uninterrupted import failed: {tail(ref_import.stderr)}")
    refs = {"export": manifest(export_ref_dir, params=False),
            "import": manifest(ws.workdir, ("sae/imp",))}
    totals = {"export": ref_export, "import": ref_import}
    sections = {}
    for kind in ("export", "import"):
        t0 = time.monotonic()
        rng = np.random.default_rng(seed + (2 if kind == "export" else 3))
        total = totals[kind].wall_s
        parent, prefix = ((os.path.dirname(out_dir), ".out.tmp-") if kind == "export"
                          else (ws.workdir, ".sae-import-"))
        final = out_dir if kind == "export" else imported
        cmd = export if kind == "export" else import_cmd
        # The writing window of an uninterrupted run, for the targeted kills: from the temporary
        # folder's appearance to the final one's.
        window = _writing_window(ws, base, cmd, parent, prefix, final, kind)
        trials, misses = [], 0
        while len(trials) < kills and misses < 10 * kills + 10:
            ws.reset(base)
            shutil.rmtree(os.path.dirname(out_dir), ignore_errors=True)
            windows = [] if window is None else [
                ("window", lambda _, p=parent, x=prefix: bool(_temp_siblings(p, x)), window)]
            done = killed_run(cmd, ws.env, rng, len(trials), total, windows, spread=1.5)
            if done["missed"]:
                misses += 1
                continue
            record = {"how": done["how"], "offset_s": done["offset_s"],
                      "temp_left": len(_temp_siblings(parent, prefix))}
            if os.path.exists(final):
                record["after_kill"] = "complete"
                got = (manifest(final, params=False) if kind == "export"
                       else manifest(ws.workdir, ("sae/imp",)))
                record["artifacts_differing"], record["params_max_rel_diff"] = compare(
                    refs[kind], got, params_rtol)
            else:
                record["after_kill"] = "absent"
                if kind == "export":
                    record.update(_rerun_export(ws, cmd, out_dir, refs[kind]))
                else:
                    record.update(_rerun_and_compare(ws, cmd, refs[kind], params_rtol,
                                                     ("sae/imp",)))
                # The rerun removes the killed run's temporary folder (atomic_dirs.temp_dir).
                record["temp_left_after_rerun"] = len(_temp_siblings(parent, prefix))
            trials.append(record)
            logging.warning("%s kill %d/%d (%s): %s", kind, len(trials), kills,
                            record["after_kill"], "ok" if _trial_ok(record) else record)
        sections[kind] = _section(
            trials, misses, t0, reference_wall_s=round(total, 2),
            writing_window_s=None if window is None else round(window, 4),
            complete_after_kill=sum(r["after_kill"] == "complete" for r in trials),
            absent_after_kill=sum(r["after_kill"] == "absent" for r in trials),
            temp_folders_left=sum(r["temp_left"] > 0 for r in trials),
            temp_folders_left_after_rerun=sum(r.get("temp_left_after_rerun", 0) > 0
                                              for r in trials))
    return sections


def _writing_window(ws, base, cmd, parent, prefix, final, kind) -> float | None:
    """Seconds from the temporary folder's appearance to the final one's, in one clean run."""
    ws.reset(base)
    shutil.rmtree(ws.path("export", "out"), ignore_errors=True)
    proc = Proc(cmd, ws.env)
    began = wait_until(proc, lambda: bool(_temp_siblings(parent, prefix)), 600)
    ended = wait_until(proc, lambda: os.path.exists(final), 600) if began else None
    proc.finish(600)
    if proc.popen.returncode != 0:
        raise RuntimeError(f"the uninterrupted {kind} failed: {tail(proc.stderr)}")
    return None if began is None or ended is None else ended - began


def _rerun_export(ws: Workspace, cmd: list[str], out_dir: str, ref: dict) -> dict:
    again = run(cmd, ws.env)
    record = {"reruns": 1, "recovered": again.popen.returncode == 0}
    if not record["recovered"]:
        record["rerun_failures"] = [{"exit": again.popen.returncode,
                                     "stderr": tail(again.stderr)}]
        return record
    record["artifacts_differing"], _ = compare(ref, manifest(out_dir, params=False))
    return record



# ----------------------------------------------------------------------------- NaN


def latest_checkpoint(ckpt_dir: str) -> tuple[int | None, bool]:
    """(the newest finished step of an Orbax checkpoint folder, whether every array of its
    state is finite); (None, True) when there is none."""
    import jax
    import orbax.checkpoint as ocp

    steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()
             and os.path.exists(os.path.join(ckpt_dir, n, "commit_success.txt"))] \
        if os.path.isdir(ckpt_dir) else []
    if not steps:
        return None, True
    state = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, str(max(steps)), "state"))
    finite = all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(state)
                 if np.issubdtype(np.asarray(x).dtype, np.floating))
    return max(steps), finite


def nan_store(base: str, dest: str, step: int) -> int:
    """Copies base's store to `dest` with one row of the smoke SAE's batch `step` set to NaN
    (through TensorStore, as a corrupted disk would); returns that row. A batch is a pure
    function of (seed, step), so the row is read first at `step`."""
    import tensorstore as ts

    from monosem_jax.activations import reader as reader_lib
    from monosem_jax.activations import store
    from monosem_jax.configs.sae import default as sae_default
    from monosem_jax.sae import run as sae_run

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(os.path.join(base, "acts"), dest)
    config = sae_default.get_config("smoke")
    config.store = dest
    cfg = sae_run.TrainConfig.from_config(config)
    st = store.open_store(store.kvstore_for(dest), cfg.hook)
    reader = reader_lib.ActivationReader(st, cfg.reader_config(config.seed))
    row = int(reader.batch_indices(step)[0])
    reader.close()
    acts = ts.open({"driver": "zarr3", "kvstore": store.join(store.kvstore_for(dest),
                                                              f"{cfg.hook}/acts/")},
                   context=store.shared_context()).result()
    acts[row : row + 1].write(np.full((1, acts.shape[1]), np.nan, np.float32)).result()
    return row


def nan_verdict(exit_code: int, stderr: str, ckpt_dir: str, summary: str,
                step: int | None) -> dict:
    """What a NaN must give: exit 2, one `error:` line naming the step (and the checkpoint
    kept), the newest checkpoint before the NaN and finite, no summary."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    named = re.search(r"at step (\d+)", errors[-1]) if errors else None
    latest, finite = latest_checkpoint(ckpt_dir)
    record = {"exit": exit_code, "error": errors[-1] if errors else None,
              "error_lines": len(errors), "step_named": int(named.group(1)) if named else None,
              "latest_checkpoint": latest, "checkpoint_finite": finite,
              "summary_written": os.path.exists(summary)}
    problems = []
    if record["exit"] != 2 or len(errors) != 1:
        problems.append(f"exit {record['exit']} with {len(errors)} error lines "
                        f"(want 2 and 1): {tail(stderr, 3)}")
    if named is None or (step is not None and record["step_named"] != step):
        problems.append(f"the error names step {record['step_named']}, want {step}")
    if errors and "last good checkpoint is kept" not in errors[-1]:
        problems.append("the error does not say the last good checkpoint is kept")
    if not finite or (latest is not None and named and latest > int(named.group(1))):
        problems.append(f"checkpoint {latest} is not a good one (finite: {finite})")
    if record["summary_written"]:
        problems.append("a summary was written for a run that failed")
    record["ok"], record["problems"] = not problems, problems
    return record


def _nan_run_verdict(proc: Proc, folder: str, step: int | None) -> dict:
    """nan_verdict of a finished process for the run folder `folder` (checkpoints/, summary)."""
    return nan_verdict(proc.popen.returncode, proc.stderr, os.path.join(folder, "checkpoints"),
                       os.path.join(folder, "summary.json"), step)


def nan_faults(ws: Workspace, base: str, bad_step: int = 25) -> dict:
    """The --nan section: a NaN in a batch of each trainer (SAE from the store, a sweep, the
    LM, an SAE fed by the LM). Each must stop with one `error:` line naming the step."""
    from monosem_jax.configs.sae import default as sae_default

    t0 = time.monotonic()
    out = {}
    store_dir = ws.path("nan-store")
    smoke_sae = sae_default.get_config("smoke")
    assert smoke_sae.checkpoint_every < bad_step < smoke_sae.steps
    row = nan_store(base, store_dir, bad_step)
    sae_cfg = f"--config={config_path('sae/default.py')}:smoke"
    # The SAE from the store: one NaN row in batch `bad_step`, a checkpoint every 10 steps.
    ws.reset(base)
    proc = run([binary("monosem-train-sae"), f"--workdir={ws.workdir}", sae_cfg,
                f"--config.store={store_dir}", "--config.name=nan"], ws.env)
    run_dir = os.path.join(ws.workdir, "sae", "nan")
    out["sae"] = {"nan_row": row, **_nan_run_verdict(proc, run_dir, bad_step)}
    # A sweep on the same store: its members read the same batches (the sweep's data seed).
    ws.reset(base)
    proc = run(sweep_cmd(ws.workdir, f"--config.store={store_dir}", "--config.sweep.name=nan"),
               ws.env)
    sweep_dir = os.path.join(ws.workdir, "sweep", "nan")
    out["sweep"] = {"nan_row": row, **_nan_run_verdict(proc, sweep_dir, bad_step)}
    # The LM: no NaN can be written into token ids, so the run diverges for real: trained to
    # its first checkpoint, killed, resumed with a learning rate of 1e30 (the loss overflows).
    ws.reset()
    os.makedirs(ws.workdir)
    for name in ("corpus", "data", "tokenizer.json"):
        src = os.path.join(base, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(ws.workdir,
                                                                                   name))
    lm_cmd = [binary("monosem-train-lm"), f"--workdir={ws.workdir}",
              f"--config={config_path('gpt/tiny.py')}:smoke"]
    ckpts = os.path.join(ws.workdir, "lm", "checkpoints")
    first = Proc(lm_cmd, ws.env)
    reached = wait_until(first, lambda: any(
        os.path.exists(os.path.join(ckpts, n, "sha256.json"))
        for n in (os.listdir(ckpts) if os.path.isdir(ckpts) else ())), 600, poll=0.005)
    first.kill()
    first.finish(10)
    kept, _ = latest_checkpoint(ckpts)
    proc = run(lm_cmd + ["--config.train.learning_rate=1e30"], ws.env)
    out["lm"] = {"resumed_from": kept,
                 **_nan_run_verdict(proc, os.path.join(ws.workdir, "lm"), None)}
    if reached is None or kept is None:
        out["lm"]["ok"] = False
        out["lm"]["problems"].append("the first run ended before its first checkpoint")
    elif out["lm"]["latest_checkpoint"] != kept:
        out["lm"]["ok"] = False
        out["lm"]["problems"].append(f"checkpoint {kept} was not the one kept")
    # An SAE fed by the LM (source=lm): no store to corrupt either; a learning rate of 1e30.
    ws.reset(base)
    proc = run([binary("monosem-train-sae"), f"--workdir={ws.workdir}", sae_cfg,
                "--config.source=lm", "--config.lr=1e30", "--config.name=nan_lm"], ws.env)
    run_dir = os.path.join(ws.workdir, "sae", "nan_lm")
    out["sae_lm_feed"] = _nan_run_verdict(proc, run_dir, None)
    out["ok"] = all(v["ok"] for v in out.values())
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


# ----------------------------------------------------------------------------- full disk


def _blocks(path: str | None) -> int:
    """Bytes a folder takes on tmpfs (whole 4 KiB pages per file)."""
    total = 0
    for dirpath, _, filenames in os.walk(path) if path else ():
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += -(-os.path.getsize(full) // 4096) * 4096
    return total


def _used(mount: str) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _mount(path: str, size: int, remount: bool = False) -> None:
    opts = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], check=True,
                   capture_output=True, text=True)


def full_disk(ws: Workspace, ref: dict, config: str = SMOKE) -> dict:
    """The --full_disk section: W is a tmpfs too small for the next stage, for each stage in
    turn (from its snapshot): one `error:` line and exit 2 in that stage, then the same
    command, with room again, finishes with the reference's artifacts and loses nothing."""
    t0 = time.monotonic()
    if os.geteuid() != 0:
        return {"skipped": "needs root (mount -t tmpfs)", "ok": True}
    final = _blocks(ref["dir"])
    big = 4 * final + (64 << 20)
    order = [s for s in STAGES if s in ref["snapshots"]]
    size_at = {s: _blocks(ref["snapshots"][s]) for s in order}
    stages = {}
    clear(ws.workdir)
    os.makedirs(ws.workdir, exist_ok=True)
    _mount(ws.workdir, big)
    try:
        for i, stage in enumerate(order):
            clear(ws.workdir)
            _mount(ws.workdir, big, remount=True)
            if ref["snapshots"][stage]:
                shutil.copytree(ref["snapshots"][stage], ws.workdir, dirs_exist_ok=True)
            after = size_at[order[i + 1]] if i + 1 < len(order) else final
            room = max((after - size_at[stage]) // 2, 4096)
            limit = -(-(_used(ws.workdir) + room) // 4096) * 4096
            _mount(ws.workdir, limit, remount=True)
            cmd = pipeline_cmd(ws.workdir, config)
            proc = run(cmd, ws.env)
            errors = proc.error_lines()
            record = {"limit_bytes": limit, "stage_bytes": after - size_at[stage],
                      "exit": proc.popen.returncode, "failed_in": proc.stage,
                      "error": errors[-1] if errors else None, "error_lines": len(errors)}
            problems = []
            if proc.popen.returncode != 2 or len(errors) != 1:
                problems.append(f"exit {proc.popen.returncode} with {len(errors)} error lines "
                                f"(want 2 and 1): {tail(proc.stderr, 4)}")
            if proc.popen.returncode != 0 and proc.stage != stage:
                problems.append(f"ran out in stage {proc.stage}, not {stage}")
            if proc.popen.returncode == 0:
                problems.append("finished: the disk never ran out")
            if problems:
                record["log"] = keep_log(ws.path("logs"), f"full_disk-{stage}.txt", proc)
            _mount(ws.workdir, big, remount=True)
            record.update(_rerun_and_compare(ws, cmd, ref["manifest"], 0.0))
            if not _trial_ok(record):
                problems.append("the rerun with room did not recover the reference")
            record["problems"] = problems
            record["ok"] = not problems
            stages[stage] = record
            logging.warning("full disk in %s: %s", stage, "ok" if record["ok"] else problems)
    finally:
        clear(ws.workdir)
        subprocess.run(["umount", ws.workdir], check=False)
    return {"stages": stages, "ok": all(r["ok"] for r in stages.values()),
            "artifacts_differing": sum(len(r.get("artifacts_differing", ()))
                                       for r in stages.values()),
            "bytes_lost": sum(r.get("bytes_lost", 0) for r in stages.values()),
            "wall_s": round(time.monotonic() - t0, 1)}


# ----------------------------------------------------------------------------- main

def define_flags() -> None:
    """The script's flags (defined when it runs, not when a test imports the module)."""
    flags.DEFINE_integer("kills", 10, "SIGKILLs of the pipeline (0 = none).")
    flags.DEFINE_integer("seed", 0, "Seed of the kill targets and moments.")
    flags.DEFINE_string("config", SMOKE, "The pipeline's --config.")
    flags.DEFINE_string("root", "/tmp/monosem-faults", "Scratch folder (emptied first; only a "
                        "new, empty or earlier faults.py folder).")
    flags.DEFINE_integer("stages_min_kills", 0,
                         "Fail (exit 1) unless every stage was killed at least this often.")
    flags.DEFINE_bool("from_scratch", False,
                      "Start every kill trial from an empty W instead of its stage's snapshot.")
    flags.DEFINE_bool("control", True, "Run the uninterrupted pipeline twice and compare.")
    flags.DEFINE_float("params_rtol", 0.0, "Relative tolerance on parameters (0 = bit-identical).")
    flags.DEFINE_integer("sweep_kills", 0, "SIGKILLs of monosem-sweep.")
    flags.DEFINE_integer("export_import_kills", 0,
                         "SIGKILLs of monosem-export and of monosem-import (each).")
    flags.DEFINE_bool("nan", False, "Inject a NaN into a batch of every trainer.")
    flags.DEFINE_bool("full_disk", False, "Run out of disk in each stage (a tmpfs W; root only).")
    flags.DEFINE_bool("keep", False, "Keep the scratch folder at the end.")


MARKER = ".monosem-faults"  # in a scratch folder this script made (so it may empty it)


def scratch(root: str) -> str:
    root = os.path.abspath(root)
    if os.path.isdir(root) and os.listdir(root):
        if not os.path.exists(os.path.join(root, MARKER)):
            raise SystemExit(f"--root={root} is not empty and not a faults.py folder; "
                             "give a new one")
        for name in os.listdir(root):
            full = os.path.join(root, name)
            if os.path.ismount(full):
                subprocess.run(["umount", full], check=False)
        shutil.rmtree(root)
    os.makedirs(root)
    open(os.path.join(root, MARKER), "w").close()
    return root


def main(argv):
    del argv
    f = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    t0 = time.monotonic()
    root = scratch(f.root)
    ws = ws_smoke = Workspace(root)
    result, smoke_ref = {}, None
    sections = []
    if f.kills:
        sections.append(("pipeline_kills", lambda: pipeline_kills(
            ws, f.kills, f.seed, f.config, f.from_scratch, f.params_rtol, f.control)))
    smoke = [("sweep_kills", lambda: sweep_kills(ws_smoke, smoke_ref["dir"], f.sweep_kills,
                                                 f.seed, f.params_rtol), f.sweep_kills),
             ("export_import_kills", lambda: export_import_kills(
                 ws_smoke, smoke_ref["dir"], f.export_import_kills, f.seed, f.params_rtol),
              f.export_import_kills),
             ("nan", lambda: nan_faults(ws_smoke, smoke_ref["dir"]), f.nan),
             ("full_disk", lambda: full_disk(ws_smoke, smoke_ref), f.full_disk)]
    sections += [(name, fn) for name, fn, wanted in smoke if wanted]
    try:
        for name, fn in sections:
            if name != "pipeline_kills" and smoke_ref is None:
                # The other sections run on a finished smoke W: the pipeline section's
                # reference when it ran the smoke config, else one made here.
                if f.kills and f.config == SMOKE and "_reference" in result.get(
                        "pipeline_kills", {}):
                    ws_smoke, smoke_ref = ws, result["pipeline_kills"]["_reference"]
                else:
                    ws_smoke = Workspace(os.path.join(root, "smoke"))
                    smoke_ref = reference_runs(ws_smoke, SMOKE, control=False)
            try:
                result[name] = fn()
            except Exception as e:  # noqa: BLE001 - reported, and the other sections still run
                logging.exception("section %s crashed", name)
                result[name] = {"crashed": f"{type(e).__name__}: {e}", "ok": False}
            shown = {k: v for k, v in result[name].items() if k != "_reference"}
            logging.warning("%s: %s", name, json.dumps(shown, default=str))
    finally:
        if not f.keep:
            shutil.rmtree(root, ignore_errors=True)
    for section in result.values():
        section.pop("_reference", None)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["ok"] = _all_ok(result, f.stages_min_kills)
    print(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


def _all_ok(result: dict, stages_min_kills: int) -> bool:
    ok = True
    kills = result.get("pipeline_kills")
    if kills and "crashed" not in kills:
        ok &= (not kills["failures"] and kills["artifacts_differing"] == 0
               and kills["bytes_lost"] == 0 and not kills["control_differing"]
               and kills["recoveries"] == kills["kills"]
               and min(kills["kills_per_stage"].values()) >= stages_min_kills)
    sections = [result.get("sweep_kills"), *(result.get("export_import_kills") or {}).values()]
    for section in filter(None, sections):
        ok &= ("crashed" not in section and not section["failures"]
               and section["recoveries"] == section["kills"])
    for name in ("pipeline_kills", "nan", "full_disk"):
        ok &= result.get(name, {}).get("ok", True)
    return bool(ok)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
