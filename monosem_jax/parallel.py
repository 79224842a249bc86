"""The one mesh helper: a ('data', 'model') mesh with Auto axis types, and batch placement.

jax 0.10's `make_mesh` defaults to Explicit axes, which breaks vmapped sweeps, so the axis types
are always given. A batch is the same global batch in every process (a pure function of (seed,
step)); each process copies only its own devices' rows (`place`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(model_parallel: int = 1, devices=None) -> jax.sharding.Mesh:
    """All devices as (data, model) with `model_parallel` devices on the model axis."""
    devices = jax.devices() if devices is None else devices
    if model_parallel <= 0 or len(devices) % model_parallel:
        raise ValueError(f"model_parallel={model_parallel} must divide {len(devices)} devices")
    shape = (len(devices) // model_parallel, model_parallel)
    return jax.make_mesh(
        shape, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def local_mesh() -> jax.sharding.Mesh:
    """This process's own devices as a (data, model) mesh: what a process loads or computes
    without the others (artifacts, analyses run by process 0 alone)."""
    return make_mesh(devices=jax.local_devices())


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', the rest replicated."""
    return NamedSharding(mesh, P("data"))


def check_batch(mesh: jax.sharding.Mesh, batch_size: int) -> None:
    """A global batch of `batch_size` rows splits evenly over the mesh's 'data' axis."""
    if batch_size % mesh.shape["data"]:
        raise ValueError(
            f"a batch of {batch_size} rows does not split over {mesh.shape['data']} "
            "data-parallel devices; choose a batch size divisible by the device count on the "
            "'data' axis"
        )


def global_batch(mesh: jax.sharding.Mesh, batch: np.ndarray) -> jax.Array:
    """The global batch (every process holds it whole: batches are pure functions of (seed,
    step)) as one array split over 'data'; each process copies only its own devices' rows."""
    check_batch(mesh, batch.shape[0])
    return place(batch, data_sharding(mesh))


def place(value, sharding: NamedSharding) -> jax.Array:
    """A global array of `value`, which every process holds whole (a batch, an init), laid out by
    `sharding`: each process copies only the pieces its own devices hold."""
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _latent_axis(path) -> int | None:
    """The position of the F (latent) axis of a state leaf, from its shape-suffixed name
    (w_enc_DF -> 1, w_dec_FD and b_enc_F -> 0, b_dec_D -> None); the Adam moments have their
    parameter's name in their path."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if not names or "_" not in names[-1]:
        return None
    suffix = names[-1].rsplit("_", 1)[1]
    return suffix.index("F") if suffix.isupper() and "F" in suffix else None


def dictionary_specs(tree, stacked: bool = False):
    """PartitionSpecs of an SAE state (or params) pytree: every latent axis over 'model' (W_enc
    columns, W_dec rows, b_enc, thresholds, the Adam moments, per-latent counters), the rest
    replicated. `stacked`: leaves carry a leading sweep-member axis (kept whole)."""

    def spec(path, leaf):
        axis = _latent_axis(path)
        if axis is None:
            return P()
        axes = [None] * (np.ndim(leaf) - int(stacked))
        axes[axis] = "model"
        return P(*([None] if stacked else []), *axes)

    return jax.tree_util.tree_map_with_path(spec, tree)


def dictionary_shardings(mesh: jax.sharding.Mesh, tree, stacked: bool = False):
    """NamedShardings of `dictionary_specs` on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), dictionary_specs(tree, stacked),
                        is_leaf=lambda x: isinstance(x, P))


def to_host(tree):
    """The pytree as numpy arrays on every process (sharded global arrays gathered whole)."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
