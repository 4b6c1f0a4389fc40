"""Training logs without TensorFlow: one JSON line per logged step, TensorBoard scalars and
images through tensorboardX, and sample grids as PNG files. Only process 0 writes.

The workdir may be remote (`gs://...`, anything etils.epath reaches): sample grids are uploaded
as written; metrics.jsonl (an object store cannot append) and TensorBoard's event files
(tensorboardX writes them to a local temporary folder) are uploaded whole at most every
`REMOTE_UPLOAD_SECONDS`, on `flush()` (before each checkpoint) and on `close()`."""

from __future__ import annotations

import json
import logging as std_logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from absl import logging
from etils import epath

from deepgin_jax import image_io
from deepgin_jax.atomic import atomic_write
from deepgin_jax.paths import as_path, is_remote

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
REMOTE_UPLOAD_SECONDS = 120.0  # as tensorboardX's own flush period


class _RemoteUploads:
    """metrics.jsonl and TensorBoard's event files of a remote workdir: the metrics' text and
    the event files are kept here and uploaded whole (an object store replaces an object whole
    or not at all) when they changed, at most every `REMOTE_UPLOAD_SECONDS` or when asked."""

    def __init__(self, workdir: epath.Path):
        self._metrics_path = workdir / METRICS_FILE
        self._metrics = self._metrics_path.read_text() if self._metrics_path.exists() else ""
        self._metrics_changed = False
        self._tensorboard = workdir / TENSORBOARD_DIR
        self.tensorboard_local = Path(tempfile.mkdtemp(prefix="deepgin-tensorboard-"))
        self._uploaded_sizes: dict[str, int] = {}
        self._uploaded_at = time.monotonic()

    def append_metrics(self, text: str) -> None:
        self._metrics += text
        self._metrics_changed = True
        self.upload_if_due()

    def upload_if_due(self) -> None:
        if time.monotonic() - self._uploaded_at >= REMOTE_UPLOAD_SECONDS:
            self.upload()

    def upload(self) -> None:
        if self._metrics_changed:
            with atomic_write(self._metrics_path, "w") as f:
                f.write(self._metrics)
            self._metrics_changed = False
        for local in sorted(self.tensorboard_local.iterdir()):
            size = local.stat().st_size
            if self._uploaded_sizes.get(local.name) != size:
                with atomic_write(self._tensorboard / local.name, "wb") as f:
                    f.write(local.read_bytes())
                self._uploaded_sizes[local.name] = size
        self._uploaded_at = time.monotonic()

    def close(self) -> None:
        self.upload()
        shutil.rmtree(self.tensorboard_local, ignore_errors=True)


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
        self.workdir = as_path(workdir)
        self._jsonl = None
        self._remote = None
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
        if is_remote(self.workdir):
            self._remote = _RemoteUploads(self.workdir)
            tensorboard_dir = self._remote.tensorboard_local
        else:
            self._jsonl = open(self.workdir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115
            tensorboard_dir = self.workdir / TENSORBOARD_DIR
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge_step = None if resumed_step is None else resumed_step + 1
            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=purge_step)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _to_json_number(v) for k, v in scalars.items()}}
        if self._tb is not None:
            for name, value in scalars.items():
                if isinstance(value, (int, float, np.floating, np.integer)):
                    self._tb.add_scalar(name, float(value), int(step))
        if self._remote is not None:
            self._remote.append_metrics(json.dumps(record) + "\n")
        else:
            self._jsonl.write(json.dumps(record) + "\n")

    def write_image(self, step: int, name: str, image: np.ndarray) -> epath.Path | None:
        """image: uint8 [H, W, 3]; saved as samples/<name>_<step>.png and to TensorBoard."""
        if not self.enabled:
            return None
        path = self.workdir / "samples" / f"{name}_{int(step):08d}.png"
        with atomic_write(path, "wb") as f:
            f.write(image_io.encode_image(image, "PNG"))
        if self._tb is not None:
            self._tb.add_image(name, image, int(step), dataformats="HWC")
        return path

    def flush(self) -> None:
        """Makes the records written so far durable in a remote workdir (a local one has them
        already: metrics.jsonl is line-buffered)."""
        if self._remote is not None:
            if self._tb is not None:
                self._tb.flush()
            self._remote.upload()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _to_json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of `metrics.jsonl`, in order."""
    path = as_path(workdir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(workdir: str | os.PathLike, last_step: int) -> int:
    """Drops the records of `metrics.jsonl` with a step after `last_step` (atomically: a
    reader sees the old or the new file). Returns how many were dropped. A partial last line
    (a run killed mid-write) is dropped too."""
    path = as_path(workdir) / METRICS_FILE
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with path.open() as f:
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
