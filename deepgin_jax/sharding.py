"""Data parallelism with JAX's own machinery: one mesh over every device, the batch split on
its "data" axis, parameters and optimizer state replicated. The same code runs on one CPU, a
GPU node or a multi-host TPU/GPU slice (after `jax.distributed.initialize()`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several": then
# jax.distributed.initialize() finds the coordinator by itself (SLURM, Open MPI, TPU pods) or
# from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
_MULTI_PROCESS_HINTS = ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def wants_distributed(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the launcher started several processes that must form one JAX job."""
    if int(environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if "TPU_WORKER_HOSTNAMES" in environ:
        return len(environ["TPU_WORKER_HOSTNAMES"].split(",")) > 1
    return any(name in environ for name in _MULTI_PROCESS_HINTS)


def maybe_initialize_distributed(mode: str = "auto") -> None:
    """Calls `jax.distributed.initialize()` for "on", or for "auto" when `wants_distributed()`."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed must be auto, on or off, got {mode!r}")
    if mode == "on" or (mode == "auto" and wants_distributed()):
        jax.distributed.initialize()
        logging.info(
            "jax.distributed: process %d of %d, %d local / %d global devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


def create_mesh() -> Mesh:
    """A one-axis mesh over all devices of all processes.

    The axis is `Auto`: shardings are given at the jit boundary and XLA propagates them (and
    inserts the gradient all-reduce), so the model code needs no sharding annotations.
    """
    return jax.make_mesh(
        (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch_size(local_batch_size: int) -> int:
    return local_batch_size * jax.process_count()


def check_batch_divides(global_batch: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"the global batch of {global_batch} samples does not split over {devices} devices; "
            "choose data.items_per_batch so that items_per_batch * len(mask_types) is a "
            "multiple of the device count"
        )


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each process's slice of the batch -> global arrays sharded over the data axis."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
