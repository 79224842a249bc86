"""The one mesh helper: a ('data', 'model') mesh with Auto axis types, and batch placement.

jax 0.10's `make_mesh` defaults to Explicit axes, which breaks vmapped sweeps, so the axis types
are always given. Batches enter as global arrays built from each process's local rows.
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


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', the rest replicated."""
    return NamedSharding(mesh, P("data"))


def global_batch(mesh: jax.sharding.Mesh, local_batch: np.ndarray) -> jax.Array:
    """A global array from this process's rows (the whole batch on a single host)."""
    data_size = mesh.shape["data"]
    if (local_batch.shape[0] * jax.process_count()) % data_size:
        raise ValueError(
            f"batch of {local_batch.shape[0]} rows per host does not split over {data_size} "
            "data-parallel devices; choose a batch size divisible by the device count"
        )
    return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch)
