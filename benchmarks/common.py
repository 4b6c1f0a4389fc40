"""Timing and reporting shared by the benchmarks (not part of the package)."""

from __future__ import annotations

import json
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from deepgin_jax import throughput


def peak_tflops(dtype: str, override: float | None = None) -> float | None:
    """The device's dense peak TFLOP/s in `dtype` (`deepgin_jax.throughput.DEVICE_PEAKS`:
    float32 at the TF32 rate on NVIDIA GPUs), `override` where given, None if unknown."""
    if override:
        return override
    peak = throughput.peak_flops(jax.devices()[0].device_kind, dtype)
    return None if peak is None else peak / throughput.TERA


def block(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_calls(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Median and min wall time of `fn()` (blocked until its results are ready)."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def lowered_flops(lowered: Any) -> float | None:
    """FLOPs of a lowered (not yet compiled or partitioned) program from XLA's cost analysis
    (None if unavailable)."""
    return throughput.cost_flops(lowered)


def peak_memory_bytes() -> dict[str, float | None]:
    """Device peak memory where the backend reports it, and the host's max RSS."""
    stats: dict[str, float | None] = {"device_peak_bytes": None}  # None: not reported
    try:
        device_stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in device_stats:
            stats["device_peak_bytes"] = float(device_stats["peak_bytes_in_use"])
    except Exception:  # memory_stats is backend-specific
        pass
    stats["host_max_rss_bytes"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return stats


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_results(name: str, rows: Sequence[dict], columns: Sequence[str], out_dir: str) -> Path:
    """Writes `<out_dir>/<device>/<name>.json` (rows + environment) and `<name>.md` (a table),
    <device> naming the device kind and count (e.g. `cpu-x1`, `NVIDIA-H100-80GB-HBM3-x8`), so
    that runs on different machines sit side by side."""
    env = environment()
    device = re.sub(r"[^A-Za-z0-9.]+", "-", f"{env['device_kind']}-x{env['device_count']}")
    out = Path(out_dir) / device
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps({"environment": env, "rows": list(rows)}, indent=2)
    )
    lines = [
        f"{name}: {env['device_kind']} x{env['device_count']}, jax {env['jax']}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
