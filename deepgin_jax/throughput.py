"""Throughput arithmetic for the training log and the benchmarks: FLOPs of a jitted step from
XLA's cost analysis, the device's dense peak, model FLOPs utilisation (MFU), running totals
(examples seen, device hours), and a profiler window over chosen steps.

MFU = achieved FLOP/s / (peak FLOP/s per device x devices). The FLOPs are XLA's count of the
program before it is partitioned (all devices' work), so the ratio needs no per-device split.
The peaks are the vendors' dense (not 2:4 sparse) tensor-core figures. float32 on NVIDIA GPUs
is measured against the TF32 rate: XLA runs float32 matmuls and convolutions on TF32 tensor
cores at JAX's default precision (Ampere and later). On TPUs float32 at the default precision
runs as single bfloat16 passes, so both dtypes share the bfloat16 peak. A device missing from
the table (a CPU, say) has no peak, and its MFU is left out rather than guessed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax

from deepgin_jax.paths import as_path

TERA = 1e12


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one device: `bfloat16` and `float32` as XLA runs it by default
    (TF32 tensor cores on Ampere and later; plain FP32 on a V100, which has neither TF32 nor
    bfloat16 units: None)."""

    bfloat16: float | None
    float32: float


# Keys are `jax.Device.device_kind`. Sources: NVIDIA's H100, H200, A100 and V100 datasheets
# (dense: half the "with sparsity" figures) and Google Cloud's TPU system-architecture pages.
DEVICE_PEAKS: dict[str, DevicePeak] = {
    "NVIDIA H100 80GB HBM3": DevicePeak(bfloat16=989.4, float32=494.7),  # SXM
    "NVIDIA H100 PCIe": DevicePeak(bfloat16=756.5, float32=378.0),
    "NVIDIA H100 NVL": DevicePeak(bfloat16=835.5, float32=417.5),
    "NVIDIA H200": DevicePeak(bfloat16=989.4, float32=494.7),  # SXM
    "NVIDIA H200 NVL": DevicePeak(bfloat16=835.5, float32=417.5),
    "NVIDIA A100-SXM4-80GB": DevicePeak(bfloat16=312.0, float32=156.0),
    "NVIDIA A100-SXM4-40GB": DevicePeak(bfloat16=312.0, float32=156.0),
    "NVIDIA A100 80GB PCIe": DevicePeak(bfloat16=312.0, float32=156.0),
    "NVIDIA A100-PCIE-40GB": DevicePeak(bfloat16=312.0, float32=156.0),
    "Tesla V100-SXM2-16GB": DevicePeak(bfloat16=None, float32=15.7),
    "Tesla V100-SXM2-32GB": DevicePeak(bfloat16=None, float32=15.7),
    "Tesla V100-PCIE-16GB": DevicePeak(bfloat16=None, float32=14.0),
    "Tesla V100-PCIE-32GB": DevicePeak(bfloat16=None, float32=14.0),
    "TPU v4": DevicePeak(bfloat16=275.0, float32=275.0),
    "TPU v5 lite": DevicePeak(bfloat16=197.0, float32=197.0),  # v5e
    "TPU v5": DevicePeak(bfloat16=459.0, float32=459.0),  # v5p
    "TPU v5p": DevicePeak(bfloat16=459.0, float32=459.0),
    "TPU v6 lite": DevicePeak(bfloat16=918.0, float32=918.0),  # v6e (Trillium)
    "TPU v6e": DevicePeak(bfloat16=918.0, float32=918.0),
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one `device_kind` device computing in `dtype` ("float32" or
    "bfloat16"); None for a device (or dtype) the table does not know."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    peak = DEVICE_PEAKS.get(device_kind)
    tflops = None if peak is None else getattr(peak, dtype)
    return None if tflops is None else tflops * TERA


def mfu(flops: float, seconds: float, num_devices: int, device_peak: float | None) -> float | None:
    """The share of `num_devices` devices' peak that `flops` in `seconds` reached (None without
    a peak)."""
    if device_peak is None or seconds <= 0:
        return None
    return flops / seconds / (device_peak * num_devices)


def cost_flops(lowered_or_compiled: Any) -> float | None:
    """FLOPs from XLA's cost analysis of a lowered or compiled program; None where the backend
    has none. A lowered program counts every device's work (it is not partitioned yet); both
    count a loop's body once (the chunked attention on CPUs is such a loop)."""
    try:
        analysis = lowered_or_compiled.cost_analysis()
    except Exception:  # some backends have no cost analysis
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


class Throughput:
    """Turns logged intervals into the training log's throughput scalars.

    `record(stage_steps, now)` is called at each logged step with the number of steps of each
    stage run since the last record; it returns images/s, TFLOP/s and MFU (when the device's
    peak is known and every stage in the interval has its FLOPs, `set_flops`), examples seen
    and device hours (wall time x devices, compiles and checkpoints included). The totals
    start from `examples_seen` and `device_hours` (a resumed run's last record).
    """

    def __init__(
        self,
        *,
        images_per_step: int,
        num_devices: int,
        device_peak: float | None,
        start_time: float,
        examples_seen: float = 0.0,
        device_hours: float = 0.0,
    ) -> None:
        self.images_per_step = images_per_step
        self.num_devices = num_devices
        self.device_peak = device_peak
        self.flops: dict[str, float | None] = {}
        self._last_time = start_time
        self.examples_seen = examples_seen
        self.device_hours = device_hours

    def set_flops(self, stage: str, flops_per_step: float | None) -> None:
        self.flops[stage] = flops_per_step

    def record(self, stage_steps: Mapping[str, int], now: float) -> dict[str, float]:
        seconds = max(now - self._last_time, 1e-9)
        self._last_time = now
        steps = sum(stage_steps.values())
        images = steps * self.images_per_step
        self.examples_seen += images
        self.device_hours += seconds * self.num_devices / 3600
        scalars = {
            "images_per_second": images / seconds,
            "examples_seen": self.examples_seen,
            "device_hours": self.device_hours,
        }
        counts = [self.flops.get(stage) for stage in stage_steps]
        if steps and all(c is not None for c in counts):
            flops = sum(c * n for c, n in zip(counts, stage_steps.values(), strict=True))
            scalars["tflops_per_step"] = flops / steps / TERA
            scalars["tflops_per_second"] = flops / seconds / TERA
            share = mfu(flops, seconds, self.num_devices, self.device_peak)
            if share is not None:
                scalars["mfu"] = share
        return scalars


class StepProfiler:
    """Traces the steps numbered `first`..`last` (1-based, as logged; 0 = off) with
    `jax.profiler` into `log_dir` (TensorBoard's plugins/profile/<run>/ layout, with a Perfetto
    trace beside it)."""

    def __init__(self, log_dir: str | os.PathLike, first: int, last: int) -> None:
        self.log_dir, self.first, self.last = as_path(log_dir), first, last
        self.active = False

    def before_step(self, step: int) -> None:
        """Call before running step number `step` (1-based)."""
        if self.first and step == self.first and not self.active:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(os.fspath(self.log_dir), create_perfetto_trace=True)
            self.active = True

    def after_step(self, step: int, outputs: Any) -> None:
        """Call after dispatching step number `step`; waits for `outputs` at the last one, so
        the trace holds the device work."""
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
