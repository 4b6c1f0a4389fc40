"""Throughput arithmetic (FLOPs, device peaks, MFU, running totals) and its training-log hook:
a tiny run logs the scalars and traces the configured steps."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import pytest

from deepgin_jax import config as config_lib
from deepgin_jax import metric_writers, throughput, train_lib
from tests.test_train import ONE_BLOCK_NETWORK, smoke_config


def test_peaks_are_dense_with_float32_at_the_tf32_rate_on_gpus():
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(494.7e12)
    assert throughput.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == pytest.approx(156e12)
    assert throughput.peak_flops("TPU v5 lite", "float32") == pytest.approx(197e12)
    # Unknown devices and a V100's missing bfloat16 units: no peak, so no MFU.
    assert throughput.peak_flops("cpu", "float32") is None
    assert throughput.peak_flops("Tesla V100-SXM2-16GB", "bfloat16") is None
    assert throughput.mfu(1e12, 1.0, 1, None) is None
    with pytest.raises(ValueError, match="float16"):
        throughput.peak_flops("NVIDIA H200", "float16")


def test_mfu_divides_by_every_devices_peak():
    # 6.6 TFLOP in 30 ms on 2 devices of 989.4 TFLOP/s.
    assert throughput.mfu(6.6e12, 0.03, 2, 989.4e12) == pytest.approx(6.6 / 0.03 / (2 * 989.4))


def test_cost_flops_counts_a_matmul():
    x = jax.ShapeDtypeStruct((32, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((64, 16), jnp.float32)
    lowered = jax.jit(jnp.matmul).lower(x, w)
    assert throughput.cost_flops(lowered) == pytest.approx(2 * 32 * 64 * 16)
    assert throughput.cost_flops(object()) is None


def test_throughput_weights_each_stages_flops_and_keeps_totals():
    meter = throughput.Throughput(
        images_per_step=12,
        num_devices=2,
        device_peak=100e12,
        start_time=0.0,
        examples_seen=120.0,
        device_hours=1.0,
    )
    meter.set_flops("warmup", 1e12)
    meter.set_flops("gan", 4e12)
    got = meter.record({"warmup": 1, "gan": 3}, now=2.0)  # 13 TFLOP over 4 steps in 2 s
    assert got["images_per_second"] == pytest.approx(48 / 2.0)
    assert got["tflops_per_step"] == pytest.approx(13 / 4)
    assert got["tflops_per_second"] == pytest.approx(6.5)
    assert got["mfu"] == pytest.approx(6.5 / 200)
    assert got["examples_seen"] == 168.0
    assert got["device_hours"] == pytest.approx(1.0 + 2 * 2.0 / 3600)
    # A stage without a count: the interval has no FLOP figures; without a peak, no MFU.
    meter.set_flops("gan", None)
    assert "tflops_per_second" not in meter.record({"gan": 1}, now=3.0)
    meter.set_flops("gan", 4e12)
    meter.device_peak = None
    got = meter.record({"gan": 1}, now=4.0)
    assert got["tflops_per_second"] == pytest.approx(4.0) and "mfu" not in got


def test_profile_steps_are_validated():
    for first, last in ((0, 2), (3, 2), (-1, 1)):
        config = smoke_config(profile_first_step=first, profile_last_step=last)
        with pytest.raises(ValueError, match="profile_first_step"):
            config_lib.validate_config(config)
    config_lib.validate_config(smoke_config(profile_first_step=2, profile_last_step=2))


def test_training_logs_throughput_and_traces_the_chosen_steps(tmp_path):
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(
        smoke_config(**ONE_BLOCK_NETWORK, profile_first_step=2, profile_last_step=3), str(workdir)
    )
    records = [r for r in metric_writers.read_metrics(workdir) if "g_loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    images = 2 * 3  # 2 photos x 3 masks a step
    assert [r["examples_seen"] for r in records] == [images * s for s in (1, 2, 3, 4)]
    hours = [r["device_hours"] for r in records]
    assert all(0 < a < b for a, b in itertools.pairwise(hours))
    assert all(r["images_per_second"] > 0 and r["tflops_per_second"] > 0 for r in records)
    warmup, gan = records[0]["tflops_per_step"], records[-1]["tflops_per_step"]
    assert 0 < warmup < gan  # the GAN step adds the discriminator's passes
    assert all("mfu" not in r for r in records)  # a CPU has no peak in the table
    traces = list((workdir / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert list(traces[0].parent.glob("perfetto_trace.json.gz"))


def test_a_resumed_run_continues_the_totals(tmp_path):
    writer = metric_writers.MetricWriter(tmp_path, tensorboard=False)
    writer.write_scalars(4, {"g_loss": 1.0, "examples_seen": 24.0, "device_hours": 0.5})
    writer.close()
    assert train_lib._resumed_totals(writer, 4, 6) == {"examples_seen": 24.0, "device_hours": 0.5}
    # A run logged before these scalars existed: its steps' images, and no hours.
    bare = metric_writers.MetricWriter(tmp_path / "old", tensorboard=False)
    bare.close()
    assert train_lib._resumed_totals(bare, 4, 6) == {"examples_seen": 24.0, "device_hours": 0.0}
    assert train_lib._resumed_totals(writer, 0, 6) == {"examples_seen": 0.0, "device_hours": 0.0}
