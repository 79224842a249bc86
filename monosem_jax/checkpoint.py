"""The one checkpoint wrapper: Orbax CheckpointManager with a state pytree and a JSON meta dict.

Saves `Composite(state=StandardSave, meta=JsonSave)` every `save_every` steps (asynchronously),
keeps the newest `max_to_keep`, and restores against an abstract tree so shardings and dtypes come
from the caller. A directory with no finished checkpoint restores to None; Orbax only exposes a
step once its save has been finalised, so a kill mid-save never yields a half-written state.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of `step` (default: latest), or None when nothing was saved yet."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["meta"]

    def restore_part(self, abstract_part, step: int):
        """The entries of `abstract_part` (a sub-tree of the saved state, e.g. {"params": ...})
        from `step`, without the rest (an optimiser state the reader cannot build)."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    abstract_part, restore_args=restore_args, partial_restore=True
                )
            ),
        )
        return restored["state"]

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Starts an async save when `step` is on the interval (or `force`); True if it did."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a concrete pytree, for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def with_sharding(abstract_tree, sharding):
    """The same ShapeDtypeStructs placed with `sharding` (e.g. to restore on other devices)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree
    )
