"""Training logs without TensorFlow: one JSON line per logged step, TensorBoard scalars and
images through tensorboardX, and sample grids as PNG files. Only process 0 writes."""

from __future__ import annotations

import json
import logging as std_logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from absl import logging

from deepgin_jax import image_io
from deepgin_jax.atomic import atomic_write

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Writes `metrics.jsonl`, TensorBoard event files and `samples/step_*.png` in a workdir.

    `resumed_step`: the step a resumed run restarts from. Records of later steps (written by
    the run before it was killed) are dropped from `metrics.jsonl` and hidden in TensorBoard,
    so every step is recorded once.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resumed_step: int | None = None,
    ):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resumed_step is not None:
            dropped = truncate_metrics(self.workdir, resumed_step)
            if dropped:
                logging.info(
                    "metrics.jsonl: dropped %d record(s) after step %d (the interrupted run's)",
                    dropped,
                    resumed_step,
                )
        self._jsonl = open(self.workdir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge_step = None if resumed_step is None else resumed_step + 1
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=purge_step)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _to_json_number(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in scalars.items():
                if isinstance(value, (int, float, np.floating, np.integer)):
                    self._tb.add_scalar(name, float(value), int(step))

    def write_image(self, step: int, name: str, image: np.ndarray) -> Path | None:
        """image: uint8 [H, W, 3]; saved as samples/<name>_<step>.png and to TensorBoard."""
        if not self.enabled:
            return None
        path = self.workdir / "samples" / f"{name}_{int(step):08d}.png"
        image_io.save_image(path, image)
        if self._tb is not None:
            self._tb.add_image(name, image, int(step), dataformats="HWC")
        return path

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _to_json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of `metrics.jsonl`, in order."""
    path = Path(workdir) / METRICS_FILE
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str | os.PathLike, last_step: int) -> int:
    """Drops the records of `metrics.jsonl` with a step after `last_step` (atomically: a
    reader sees the old or the new file). Returns how many were dropped. A partial last line
    (a run killed mid-write) is dropped too."""
    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(record.get("step", 0)) > last_step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        with atomic_write(path, "w") as f:
            f.writelines(kept)
    return dropped


def image_grid(columns: list[np.ndarray], max_rows: int = 4) -> np.ndarray:
    """Side-by-side columns of images: each column [N, H, W, 3] float in [0, 1] -> uint8 grid."""
    rows = min(max_rows, columns[0].shape[0])
    tiles = [np.concatenate([np.asarray(c[i]) for c in columns], axis=1) for i in range(rows)]
    grid = np.concatenate(tiles, axis=0)
    return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of Orbax and Grain (each checkpoint logs dozens of lines)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in ("/orbax/", "/grain/"))
        return record.levelno >= std_logging.WARNING or not noisy


def quiet_library_logging() -> None:
    """Keeps Orbax's and Grain's warnings and errors, drops their INFO lines."""
    logger = logging.get_absl_logger()
    if not any(isinstance(f, _QuietLibraries) for f in logger.filters):
        logger.addFilter(_QuietLibraries())
