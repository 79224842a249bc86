"""The one checkpoint wrapper: Orbax CheckpointManager with a state pytree and a JSON meta dict.

Saves `Composite(state=StandardSave, meta=JsonSave)` every `save_every` steps (asynchronously),
keeps the newest `max_to_keep`, and restores against an abstract tree so shardings and dtypes come
from the caller. A directory with no finished checkpoint restores to None; Orbax only exposes a
step once its save has been finalised, so a kill mid-save never yields a half-written state.

Verified steps. Orbax and TensorStore do not check a checkpoint's OCDBT data files on read (a
flipped byte in a data file restores silently as a wrong value), so once a step is final its
folder gets `sha256.json`: the SHA-256 of every file of the step, by sorted relative path. With
async saves a step is final only when the next save (or `wait`/`close`) waits for it, so digests
are written then, by process 0, for every listed step without one. A restore checks the step's
digest first; a step without one (saved before digests existed, or killed between its finalise
and its digest) is restored unverified. A restore that fails with a data error (TensorStore's
DATA_LOSS, undecodable JSON) counts as corrupted too.
Training resume (`restore` with no step) sets a corrupted newest step aside, whole, in
`<checkpoints>.corrupted/<step>/` (outside Orbax's folder, so the run can save that step again)
and restores the previous good step; loaders naming a step get one CorruptCheckpoint line. (In a
multi-process run a decode error without a digest mismatch is that one line too: only the
processes that read the bad chunk see it, so they could not agree on setting the step aside.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import jax
import orbax.checkpoint as ocp
from absl import logging

from monosem_jax import distributed
from monosem_jax.errors import CorruptCheckpoint

DIGEST_FILE = "sha256.json"  # in each final step's folder; Orbax ignores files it did not write
_DIGEST_TMP = DIGEST_FILE + ".tmp"


class _BadStep(Exception):
    """A step whose files fail their digest or do not decode: `detail` names the first bad file.

    `everywhere`: every process finds it (a digest checks every file); a restore's decode error
    may show on the processes that read the bad chunk only."""

    def __init__(self, step: int, detail: str, everywhere: bool):
        super().__init__(f"step {step}: {detail}")
        self.step, self.detail, self.everywhere = step, detail, everywhere


class Checkpointer:
    """Save/restore `(state, meta)` pairs under one directory."""

    def __init__(self, directory: str | os.PathLike, *, save_every: int, max_to_keep: int = 2,
                 this_process_only: bool = False):
        """`this_process_only`: this process reads (or writes) alone, in a multi-process run too
        (an artifact loader, which a stage run by process 0 alone calls); by default every
        process takes part, as Orbax's sharded saves and restores need."""
        if save_every <= 0:
            raise ValueError(f"checkpoint interval must be positive, got {save_every}")
        self.directory = os.path.abspath(os.fspath(directory))
        if this_process_only:
            os.makedirs(self.directory, exist_ok=True)
        me = jax.process_index()
        alone = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_every,
            enable_async_checkpointing=True,
            create=not this_process_only,  # Orbax leaves a subset's folder to the caller
            **({"multiprocessing_options": alone} if this_process_only else {}),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._alone = this_process_only
        self._writes_digests = this_process_only or me == 0
        self._saved = False  # only a writer records digests in wait()/close(), never a loader

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of `step` (default: latest), or None when nothing was saved yet.

        With no step (a training resume), corrupted steps are set aside, newest first, each
        reported in one log line, until one restores; none left is a CorruptCheckpoint."""
        def restore_step(s):
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore())
            restored = self._verified(s, lambda: self._manager.restore(s, args=args))
            return restored["state"], restored["meta"]

        if step is not None:
            return self._explained(step, restore_step)
        set_aside = []
        for s in sorted(self._manager.all_steps(), reverse=True):
            try:
                return restore_step(s)
            except _BadStep as bad:
                if not (bad.everywhere or self._alone or not distributed.is_multiprocess()):
                    raise self._corrupt(bad) from None  # the processes would not agree
                where = self._set_aside(s)
                logging.warning("checkpoint step %d of %s is corrupted (%s); moved it to %s and "
                                "trying the previous step", s, self.directory, bad.detail, where)
                set_aside.append(s)
        if set_aside:
            raise CorruptCheckpoint(
                f"no intact checkpoint left in {self.directory}: steps {set_aside} were corrupted "
                f"and moved to {self.directory}.corrupted; rerun to train from step 0")
        return None

    def restore_part(self, abstract_part, step: int):
        """The entries of `abstract_part` (a sub-tree of the saved state, e.g. {"params": ...})
        from `step`, without the rest (an optimiser state the reader cannot build); a corrupted
        step is one CorruptCheckpoint naming the run, the step and the fix."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
            abstract_part, restore_args=restore_args, partial_restore=True))

        def restore_step(s):
            return self._verified(s, lambda: self._manager.restore(s, args=args))["state"]

        return self._explained(step, restore_step)

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Starts an async save when `step` is on the interval (or `force`); True if it did."""
        if not (force or self._manager.should_save(step)):
            return False
        # Orbax waits for the previous save here anyway; once it is final, digest it (before
        # this save's finalise may delete old steps).
        self._manager.wait_until_finished()
        self._record_digests()
        self._saved = True
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()
        if self._saved:
            self._record_digests()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _record_digests(self) -> None:
        """Writes the digest of every listed (so final) step that has none, on process 0."""
        if not self._writes_digests:
            return
        for step in self._manager.all_steps():
            step_dir = self.step_dir(step)
            if os.path.isdir(step_dir) and not os.path.exists(os.path.join(step_dir, DIGEST_FILE)):
                try:
                    write_digest(step_dir)
                except FileNotFoundError:  # removed meanwhile (max_to_keep, a user)
                    continue

    def _verified(self, step: int, restore_fn):
        """`restore_fn()` once `step`'s files match its digest; _BadStep if they do not or the
        restore fails on undecodable data."""
        step_dir = self.step_dir(step)
        if os.path.exists(os.path.join(step_dir, DIGEST_FILE)):
            bad = first_mismatch(step_dir)
            if bad:
                raise _BadStep(step, bad, everywhere=True)
        else:
            logging.info("checkpoint step %d of %s has no digest (saved before digests, or killed "
                         "before its digest was written): restoring it unverified",
                         step, self.directory)
        try:
            return restore_fn()
        except ValueError as e:  # TensorStore's errors and JSONDecodeError are ValueErrors
            if not _is_data_error(e):
                raise
            raise _BadStep(step, _bad_file_of(e, step_dir), everywhere=False) from e

    def _explained(self, step: int, restore_step):
        """`restore_step(step)`; a corrupted step is one CorruptCheckpoint line with the fix."""
        try:
            return restore_step(step)
        except _BadStep as bad:
            raise self._corrupt(bad) from None

    def _corrupt(self, bad: _BadStep) -> CorruptCheckpoint:
        run = os.path.dirname(self.directory)
        return CorruptCheckpoint(
            f"checkpoint step {bad.step} of {run} is corrupted ({bad.detail}); delete "
            f"{self.step_dir(bad.step)} and {os.path.join(run, 'summary.json')} and rerun the "
            "stage that wrote it: training resumes from the previous step")

    def _set_aside(self, step: int) -> str:
        """Moves a corrupted step folder out of Orbax's sight (kept, not deleted); its new path.

        Every process found it bad (the same files); process 0 moves it between two barriers."""
        target = os.path.join(self.directory + ".corrupted", str(step))
        n = 1
        while os.path.exists(target):  # the same step went bad before
            n += 1
            target = os.path.join(self.directory + ".corrupted", f"{step}.{n}")
        if not self._alone:
            distributed.barrier(f"checkpoint-verify-{step}")
        if self._alone or distributed.is_primary():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(self.step_dir(step), target)
        if not self._alone:
            distributed.barrier(f"checkpoint-set-aside-{step}")
        self._manager.reload()  # forget the step, so the resumed run can save it again
        return target


def _file_digests(step_dir: str) -> dict[str, str]:
    """SHA-256 (hex) of every file under `step_dir` but the digest, by sorted relative path."""
    digests = {}
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir).replace(os.sep, "/")
            if relative not in (DIGEST_FILE, _DIGEST_TMP):
                digests[relative] = _sha256(path)
    return dict(sorted(digests.items()))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_digest(step_dir: str) -> None:
    """Records `step_dir`'s file digests in its DIGEST_FILE (written whole, then renamed)."""
    record = {"algorithm": "sha256", "files": _file_digests(step_dir)}
    tmp = os.path.join(step_dir, _DIGEST_TMP)
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(step_dir, DIGEST_FILE))


def first_mismatch(step_dir: str) -> str | None:
    """'<file>: <why>' of the first recorded file (sorted) that is missing or differs from the
    step's digest; None when all match. Files the digest does not list are not checked."""
    try:
        with open(os.path.join(step_dir, DIGEST_FILE)) as f:
            recorded = json.load(f)["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{DIGEST_FILE}: unreadable digest"
    for relative, want in sorted(recorded.items()):
        try:
            got = _sha256(os.path.join(step_dir, relative))
        except FileNotFoundError:
            return f"{relative}: missing"
        if got != want:
            return f"{relative}: sha256 mismatch"
    return None


def _is_data_error(error: BaseException) -> bool:
    """Whether a restore failed on the stored bytes (not, say, a tree that does not match)."""
    return isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)) or (
        "DATA_LOSS" in str(error))


def _bad_file_of(error: BaseException, step_dir: str) -> str:
    """The file a TensorStore data error names (relative to the step), else its first line."""
    files = re.findall(r'local file "([^"]+)"', str(error))
    if files and os.path.realpath(files[-1]).startswith(os.path.realpath(step_dir) + os.sep):
        relative = os.path.relpath(os.path.realpath(files[-1]), os.path.realpath(step_dir))
        return f"{relative}: does not decode"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first if len(first) <= 300 else first[:300] + "..."


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a concrete pytree, for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def with_sharding(abstract_tree, sharding):
    """The same ShapeDtypeStructs placed with `sharding` (e.g. to restore on other devices)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree
    )
