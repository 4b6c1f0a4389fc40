"""Training: schedules, clipping, stages, sharding, exact resume after a kill, distributed runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from deepgin_jax import checkpointing, metric_writers, train_lib
from deepgin_jax import config as config_lib

REPO = Path(__file__).resolve().parent.parent


def smoke_config(**overrides):
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def losses_by_step(workdir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metric_writers.read_metrics(workdir) if "g_loss" in r}


def test_lr_schedule_is_constant_then_linear_to_zero():
    schedule = train_lib.lr_schedule(1e-4, constant_steps=10, decay_steps=90)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(10)) == pytest.approx(1e-4)
    assert float(schedule(55)) == pytest.approx(0.5e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)
    assert float(schedule(500)) == pytest.approx(0.0, abs=1e-12)


def test_gradient_clipping_matches_torch():
    rng = np.random.default_rng(0)
    grads = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    norm = float(np.sqrt(sum(np.sum(g**2) for g in grads.values())))
    clipped = train_lib.clip_gradients(grads, max_norm=1.0, norm=jnp.asarray(norm))
    tensors = [torch.tensor(grads["a"]), torch.tensor(grads["b"])]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
    np.testing.assert_allclose(clipped["a"], tensors[0].grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], tensors[1].grad.numpy(), rtol=1e-6)
    unclipped = train_lib.clip_gradients(grads, max_norm=100.0, norm=jnp.asarray(norm))
    np.testing.assert_array_equal(unclipped["a"], grads["a"])


def test_config_typos_and_bad_values_are_errors_naming_the_key(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepgin_jax.train",
            "--config=configs/ade20k.py:smoke",
            f"--workdir={tmp_path}",
            "--config.optim.g_lrr=0.1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "g_lrr" in result.stderr
    with pytest.raises(ValueError, match="compute_dtype"):
        train_lib.validate_config(smoke_config(compute_dtype="float8"))
    with pytest.raises(ValueError, match="vgg_weights"):
        train_lib.validate_config(smoke_config(**{"loss.perceptual_weight": 0.05}))
    with pytest.raises(ValueError, match="unknown config variant 'smok'"):
        config_lib.apply_variant(config_lib.default_config(), "smok")


def test_smoke_training_runs_both_stages_and_writes_everything(tmp_path):
    workdir = tmp_path / "run"
    state = train_lib.train_and_evaluate(smoke_config(), str(workdir))
    assert int(state.step) == 4
    records = losses_by_step(workdir)
    assert [records[s]["stage"] for s in (1, 2, 3, 4)] == ["warmup", "warmup", "gan", "gan"]
    assert set(records[1]) >= {"g/coarse_l1", "g/output_l1", "g_grad_norm"}
    assert "d_loss" not in records[2]
    assert set(records[3]) >= {
        "g/adversarial",
        "g/tv",
        "d_loss",
        "d/real",
        "d/fake",
        "g_lr",
        "d_lr",
    }
    # The GAN stage restarted the generator's optimizer: its Adam count is the GAN steps only.
    adam = state.g_opt_state[0]
    assert int(adam.count) == 2
    assert (workdir / "config.json").is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert list((workdir / "samples").glob("samples_*.png"))
    assert list((workdir / "tensorboard").iterdir())
    meta = checkpointing.read_meta(workdir)
    assert meta["step"] == 4 and meta["stage"] == "gan" and meta["model"]["base_features"] == 16
    _, variables = checkpointing.load_generator(workdir)
    leaves = jax.tree.leaves(variables["params"])
    assert all(
        np.array_equal(a, b) for a, b in zip(leaves, jax.tree.leaves(state.g_params), strict=True)
    )


def test_a_killed_run_resumes_with_exactly_the_same_losses(tmp_path):
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    train_lib.train_and_evaluate(smoke_config(), str(reference_dir))
    expected = losses_by_step(reference_dir)

    # Start the same run in another process and kill it (SIGKILL) once step 2 is checkpointed.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepgin_jax.train",
            "--config=configs/ade20k.py:smoke",
            f"--workdir={killed_dir}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 600
    try:
        while not (killed_dir / "checkpoints" / "2").is_dir():
            assert process.poll() is None, "the training process ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (killed_dir / "checkpoints" / "4").exists(), "the run finished before it was killed"

    train_lib.train_and_evaluate(smoke_config(), str(killed_dir))
    resumed = losses_by_step(killed_dir)
    for step in (3, 4):
        for key in ("g_loss", "d_loss", "g/adversarial", "g/coarse_l1", "d/real"):
            assert resumed[step][key] == expected[step][key], (step, key)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "diverging"
    config = smoke_config(**{"optim.g_lr": 1e30, "checkpoint_every_steps": 1})
    with pytest.raises(train_lib.NonFiniteLossError, match="last good state"):
        train_lib.train_and_evaluate(config, str(workdir))
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "no checkpoint was kept"
    _, variables = checkpointing.load_generator(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables["params"]))


SHARDED_CHECK = """
import functools, json, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from deepgin_jax import config as config_lib, train_lib
from deepgin_jax.data import pipeline
config = config_lib.apply_variant(config_lib.default_config(), "smoke")
config.data.items_per_batch = 4
setup = train_lib.build_setup(config)
batch = next(pipeline.create_train_iterator(config.data))
init = functools.partial(train_lib.init_train_state, setup, crop_size=64)
state = jax.jit(init)(jax.random.key(0))
results = []
for n in (1, 4):
    mesh = Mesh(np.array(jax.devices()[:n]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(functools.partial(train_lib.gan_step, setup=setup, stage_start=0, clip_norm=3.0,
                                     clip_includes_discriminator=True),
                   in_shardings=(rep, bat, rep), out_shardings=(rep, rep))
    sharded = {k: jax.device_put(v, bat) for k, v in batch.items()}
    results.append(jax.device_get(step(jax.device_put(state, rep), sharded, None)))
(one, m1), (four, m4) = results
assert jax.device_count() == 4


def relative_difference(a, b):
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(a)))


# Adam's first moment after one step is (1 - b1) * gradient: it compares the gradients.
report = {
    "g_grad": relative_difference(one.g_opt_state[0].mu, four.g_opt_state[0].mu),
    "d_grad": relative_difference(one.d_opt_state[0].mu, four.d_opt_state[0].mu),
    "spectral": relative_difference(one.d_spectral, four.d_spectral),
    **{k: abs(float(m1[k]) - float(m4[k])) / abs(float(m1[k]))
       for k in ("g_loss", "d_loss", "g_grad_norm", "d_grad_norm")},
}
print("REPORT", json.dumps(report))
"""


def test_step_on_four_devices_equals_the_one_device_step():
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=4",
    }
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_CHECK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT"))
    report = json.loads(line.removeprefix("REPORT"))
    # Reductions run in another order on 4 devices: float32 round-off, far from the factor of
    # 4 that a gradient summed instead of averaged over devices would show.
    assert max(report[k] for k in ("g_grad", "d_grad", "spectral")) < 1e-4, report
    assert max(report[k] for k in ("g_loss", "d_loss", "g_grad_norm", "d_grad_norm")) < 1e-5, report


def free_slurm_job_id() -> str:
    """A job id whose coordinator port (JAX: 61440 + id % 4096) is free on this machine."""
    for job_id in range(1000, 5096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job_id % 4096))
            except OSError:
                continue
        return str(job_id)
    raise RuntimeError("no free port in 61440-65535")


def test_slurm_launcher_trains_two_processes_through_jax_distributed(tmp_path):
    """launch/slurm.sbatch with a stand-in srun: two processes form one JAX job (CPU, gloo)."""
    env = {
        **os.environ,
        "PATH": f"{REPO / 'tests' / 'scripts'}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "SLURM_JOB_ID": free_slurm_job_id(),
        "SLURM_SUBMIT_DIR": str(REPO),
        "FAKE_SRUN_NTASKS": "2",
        "FAKE_SRUN_LOGDIR": str(tmp_path),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }
    workdir = tmp_path / "run"
    command = [
        "bash",
        str(REPO / "launch" / "slurm.sbatch"),
        "configs/ade20k.py:smoke",
        str(workdir),
        "--config.warmup_steps=1",
        "--config.gan_steps=1",
        "--config.sample_every_steps=10",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    logs = [(tmp_path / f"task{i}.log").read_text() for i in range(2)]
    assert result.returncode == 0, "\n".join(log[-2000:] for log in logs)
    assert "JAX process 0/2" in logs[0] and "JAX process 1/2" in logs[1]
    meta = checkpointing.read_meta(workdir)
    assert meta["step"] == 2 and meta["stage"] == "gan"
    records = losses_by_step(workdir)
    assert [records[s]["stage"] for s in (1, 2)] == ["warmup", "gan"]
    _, variables = checkpointing.load_generator(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables["params"]))
