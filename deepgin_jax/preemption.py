"""Stopping a run cleanly: SIGTERM (a preempted or cancelled job, a time limit) or Ctrl-C makes
training finish its step, save a checkpoint and leave, on every process at the same step.

Saving is collective: with several processes, one that stops and saves while another trains on
hangs the job. So a signal only sets a flag (`StopSignal`), and `StopAgreement` turns the flags
of all processes into one decision that every process reads at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from deepgin_jax import sharding


class StopSignal:
    """SIGTERM or Ctrl-C (SIGINT) sets `requested`; a second Ctrl-C quits at once without
    saving.

    Handlers can only be installed from the main thread; elsewhere (an app calling
    `train_and_evaluate` from a worker thread) signals keep their usual effect.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            # The next Ctrl-C raises KeyboardInterrupt as usual.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            logging.warning(
                "%s received: saving a checkpoint after this step and stopping (press Ctrl-C "
                "again to quit without saving)",
                name,
            )
        else:
            logging.warning("%s received: saving a checkpoint and stopping", name)
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logging.info("not on the main thread: SIGTERM/SIGINT will not save a checkpoint")
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class StopAgreement:
    """Whether to stop after the current step, the same answer on every process.

    Call `should_stop()` once per step on every process. One process decides alone: its own
    flag, read at this step. Several processes take the maximum of their flags over the mesh
    (one scalar all-reduce per step, dispatched behind the step and read at the next step, so
    the host does not wait for the device): a signal that any process sees at step t stops
    all of them after step t + 1.
    """

    def __init__(self, stop_signal: StopSignal, mesh: jax.sharding.Mesh) -> None:
        self._signal = stop_signal
        self._pending: jax.Array | None = None
        self._collective = jax.process_count() > 1
        if self._collective:
            self._per_device = sharding.batch_sharded(mesh)
            self._local_devices = len(mesh.local_devices)
            self._max = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))

    def should_stop(self) -> bool:
        local = self._signal.requested
        if not self._collective:
            return local
        flags = np.full((self._local_devices,), local, np.int32)
        agreed, self._pending = (
            self._pending,
            self._max(jax.make_array_from_process_local_data(self._per_device, flags)),
        )
        if agreed is None or not int(agreed):
            return False
        if not local:
            logging.warning("another process received a stop signal: saving and stopping")
        return True
