"""Stopping a run cleanly: SIGTERM (a preempted or cancelled job, a time limit) or Ctrl-C makes
training finish its step, save a checkpoint and leave. On several hosts every process must
receive the signal (as SLURM and TPU VMs deliver SIGTERM), since saving is collective.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from absl import logging


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
