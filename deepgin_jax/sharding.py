"""Data parallelism with JAX's own machinery: one mesh over every device, the batch split on
its "data" axis, parameters and optimizer state replicated. The same code runs on one CPU, a
GPU node or a multi-host TPU/GPU slice (after `jax.distributed.initialize()`)."""

from __future__ import annotations

import dataclasses
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
# from JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID (which this module
# reads and passes on: JAX itself reads only the address).
_MULTI_PROCESS_HINTS = ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
_SLURM_TASK_VARIABLES = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


class DistributedConfigError(ValueError):
    """The launcher's environment describes a job this process cannot join as it is."""


@dataclasses.dataclass(frozen=True)
class DistributedInit:
    """The arguments of `jax.distributed.initialize()` for this process; None = JAX detects it.

    `local_device_ids` are the GPUs this process drives, as indices into the GPUs it can see.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    reason: str = "detected by JAX"

    def kwargs(self) -> dict[str, Any]:
        names = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def wants_distributed(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the launcher started several processes that must form one JAX job."""
    if int(environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if "TPU_WORKER_HOSTNAMES" in environ:
        return len(environ["TPU_WORKER_HOSTNAMES"].split(",")) > 1
    return any(name in environ for name in _MULTI_PROCESS_HINTS)


def distributed_init(environ: Mapping[str, str] = os.environ) -> DistributedInit:
    """What `jax.distributed.initialize()` needs besides what it detects, from the launcher's
    environment.

    - JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID: all three, passed on.
    - SLURM: JAX finds the coordinator and the process id, but makes each process drive the one
      GPU numbered SLURM_LOCALID. That is right for one task per GPU and wrong for one task per
      node (it would train on one GPU of each node). So the GPUs a task can see
      (CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE) are split among the node's tasks
      (SLURM_STEP_TASKS_PER_NODE): all of them for one task per node, GPU SLURM_LOCALID for
      one task per GPU, and all it sees for a task that SLURM bound to its own GPUs
      (--gpus-per-task). Without GPU variables (CPUs, TPUs) JAX decides.
    Raises DistributedConfigError when the node's GPUs do not split evenly among its tasks.
    """
    if "JAX_COORDINATOR_ADDRESS" in environ and "SLURM_JOB_ID" not in environ:
        missing = [n for n in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if n not in environ]
        if missing:
            raise DistributedConfigError(
                f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not: set all three "
                "on every process (JAX_PROCESS_ID = 0 .. JAX_NUM_PROCESSES - 1)"
            )
        return DistributedInit(
            coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(environ["JAX_NUM_PROCESSES"]),
            process_id=int(environ["JAX_PROCESS_ID"]),
            reason="JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID",
        )
    if all(name in environ for name in _SLURM_TASK_VARIABLES):
        return DistributedInit(
            local_device_ids=_slurm_local_gpus(environ), reason="SLURM, GPUs split by task"
        )
    return DistributedInit()


def _slurm_local_gpus(environ: Mapping[str, str]) -> tuple[int, ...] | None:
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    gpus = len(visible) or int(environ.get("SLURM_GPUS_ON_NODE", "0") or 0)
    if gpus == 0:
        return None
    if "SLURM_GPUS_PER_TASK" in environ and visible:
        return tuple(range(gpus))  # SLURM bound this task to the GPUs it sees
    tasks = _slurm_tasks_on_this_node(environ)
    if tasks is None:
        return None
    if gpus % tasks:
        raise DistributedConfigError(
            f"SLURM runs {tasks} tasks on this node, which has {gpus} GPUs: start one task per "
            f"node (--ntasks-per-node=1) or one per GPU (--ntasks-per-node={gpus})"
        )
    per_task, local_id = gpus // tasks, int(environ["SLURM_LOCALID"])
    return tuple(range(local_id * per_task, (local_id + 1) * per_task))


def _slurm_tasks_on_this_node(environ: Mapping[str, str]) -> int | None:
    """SLURM_STEP_TASKS_PER_NODE ("4(x2),3": 4, 4, 3) at SLURM_NODEID; None if not given."""
    text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not text:
        per_node = environ.get("SLURM_NTASKS_PER_NODE")
        return int(per_node) if per_node else None
    counts = []
    for part in text.split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * int(repeat.rstrip(")") or 1)
    return counts[min(int(environ.get("SLURM_NODEID", "0")), len(counts) - 1)]


def maybe_initialize_distributed(mode: str = "auto") -> None:
    """Calls `jax.distributed.initialize()` for "on", or for "auto" when `wants_distributed()`,
    with the arguments of `distributed_init()`, and logs what this process then sees."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed must be auto, on or off, got {mode!r}")
    if mode == "on" or (mode == "auto" and wants_distributed()):
        init = distributed_init()
        jax.distributed.initialize(**init.kwargs())
        logging.info(
            "jax.distributed (%s): process %d of %d, %d local / %d global devices, local "
            "device ids %s",
            init.reason,
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
            list(init.local_device_ids) if init.local_device_ids else "all visible",
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


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each process's slice of the batch -> global arrays sharded over the data axis."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree` (arrays on this process's devices or on the host, the same in every process)
    replicated over every device of `mesh`: each process places its own copy, so this works
    across hosts where `jax.device_put` of a single-device array cannot."""
    sharding = replicated(mesh)

    def place(leaf: Any) -> jax.Array:
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)
