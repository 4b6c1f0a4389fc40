"""Training: schedules, clipping, stages, sharding, exact resume after a kill, distributed runs."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import shutil
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

from deepgin_jax import (
    checkpointing,
    convert,
    metric_writers,
    sharding,
    train_lib,
    train_state,
    train_steps,
)
from deepgin_jax import config as config_lib
from deepgin_jax.models import SPECTRAL_COLLECTION
from tests.test_convert import reference_discriminator_state_dict
from tests.test_vgg import TinyTorchvisionVGG19

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


# One residual block in each generator stage (the smoke variant's, instead of the paper's six):
# every kind of layer is still there, and tracing and compiling the steps take about 2.5 times
# less (measured: 50 s against 123 s for the init, warm-up and GAN steps). Named for the tests
# of launchers, layouts, signals and resumes, which keep it whatever the variant becomes.
ONE_BLOCK_NETWORK = {"model.num_coarse_blocks": 1, "model.num_refine_blocks": 1}


def losses_by_step(workdir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metric_writers.read_metrics(workdir) if "g_loss" in r}


def test_lr_schedule_is_constant_then_linear_to_zero():
    schedule = train_state.lr_schedule(1e-4, constant_steps=10, decay_steps=90)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(10)) == pytest.approx(1e-4)
    assert float(schedule(55)) == pytest.approx(0.5e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)
    assert float(schedule(500)) == pytest.approx(0.0, abs=1e-12)


def test_lr_schedule_once_per_epoch_follows_the_reference():
    # Epochs of 10 steps: 1-11 at the base rate; epoch e >= 12 at 1 - (e - 11)/90 of it.
    schedule = train_state.lr_schedule(1e-4, constant_steps=100, decay_steps=900, decay_every=10)
    for epoch in range(1, 101):
        expected = 1e-4 * (1 - max(0, epoch - 11) / 90)
        for step in (10 * (epoch - 1), 10 * epoch - 1):
            assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), (epoch, step)
    assert float(schedule(999)) == pytest.approx(1e-4 / 90, rel=1e-6)


def test_gradient_clipping_matches_torch():
    rng = np.random.default_rng(0)
    grads = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    norm = float(np.sqrt(sum(np.sum(g**2) for g in grads.values())))
    clipped = train_steps.clip_gradients(grads, max_norm=1.0, norm=jnp.asarray(norm))
    tensors = [torch.tensor(grads["a"]), torch.tensor(grads["b"])]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
    np.testing.assert_allclose(clipped["a"], tensors[0].grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], tensors[1].grad.numpy(), rtol=1e-6)
    unclipped = train_steps.clip_gradients(grads, max_norm=100.0, norm=jnp.asarray(norm))
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
        config_lib.validate_config(smoke_config(compute_dtype="float8"))
    with pytest.raises(ValueError, match="vgg_weights"):
        config_lib.validate_config(smoke_config(**{"loss.perceptual_weight": 0.05}))
    with pytest.raises(ValueError, match=r"model\.attention_impl must be one of .*got 'cudn'"):
        config_lib.validate_config(smoke_config(**{"model.attention_impl": "cudn"}))
    with pytest.raises(ValueError, match="unknown config variant 'smok'"):
        config_lib.apply_variant(config_lib.default_config(), "smok")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[train_state.TrainState, Path]:
    """(final state, workdir) of the smoke run with the variant's defaults, trained once for
    the tests that only read it or resume a copy of it."""
    workdir = tmp_path_factory.mktemp("smoke") / "run"
    return train_lib.train_and_evaluate(smoke_config(), str(workdir)), workdir


def test_smoke_training_runs_both_stages_and_writes_everything(smoke_run):
    state, workdir = smoke_run
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


# Killed-run resume: the smoke run's two warm-up steps, then four GAN steps with a learning rate
# decaying to zero over them; checkpoints at 3 (after one GAN step) and 6; no sample grids (no
# resume test reads them). The one-block network: each of the session's resumed runs (here and
# in test_checkpoint_integrity.py) traces its steps again, in less than half the time.
RESUME_OVERRIDES = {
    **ONE_BLOCK_NETWORK,
    "gan_steps": 4,
    "optim.decay_steps": 3,
    "checkpoint_every_steps": 3,
    "sample_every_steps": 0,
}
# The uninterrupted run that resumes are compared with (conftest's `resume_reference`, trained
# once a session): the same steps with a checkpoint at every step, which changes no loss.
RESUME_REFERENCE_OVERRIDES = {
    **RESUME_OVERRIDES,
    "checkpoint_every_steps": 1,
    "keep_checkpoints": 10,
}


def test_a_killed_run_resumes_with_exactly_the_same_losses(resume_reference, tmp_path):
    killed_dir = tmp_path / "killed"
    expected = losses_by_step(resume_reference)

    # Start the same run in another process and kill it (SIGKILL) once step 3 is checkpointed.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepgin_jax.train",
            "--config=configs/ade20k.py:smoke",
            f"--workdir={killed_dir}",
            *(f"--config.{k}={v}" for k, v in RESUME_OVERRIDES.items()),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 600
    try:
        while not (killed_dir / "checkpoints" / "3").is_dir():
            assert process.poll() is None, "the training process ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved = sorted(int(p.name) for p in (killed_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert 6 not in saved, "the run finished before it was killed"
    restored = saved[-1]
    # The restored checkpoint is inside the GAN stage, after at least one GAN step: the losses
    # below only match if D's params, its spectral vectors, and both GAN-stage Adam states
    # (and their schedules' counts) were saved and restored.
    assert restored == 3 and checkpointing.read_meta(killed_dir)["stage"] == "gan"

    train_lib.train_and_evaluate(smoke_config(**RESUME_OVERRIDES), str(killed_dir))
    steps = [r["step"] for r in metric_writers.read_metrics(killed_dir) if "g_loss" in r]
    assert steps == sorted(set(steps)), f"duplicate step records after the resume: {steps}"
    resumed = losses_by_step(killed_dir)
    for step in (4, 5, 6):
        for key in ("g_loss", "d_loss", "g/adversarial", "g/coarse_l1", "d/real", "d/fake"):
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


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """A uint8 batch shaped like the pipeline's: images and {0, 1} masks."""
    rng = np.random.default_rng(seed)
    n = config.data.items_per_batch * len(config.data.mask_types)
    size = config.data.crop_size
    image = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    mask = np.zeros((n, size, size, 1), np.uint8)
    mask[:, size // 4 : size // 2, size // 8 : size // 2] = 1
    return {"image": image, "mask": mask}


def test_gan_step_advances_spectral_vectors_as_three_discriminator_calls():
    """Spec 4/5.3: D runs on (masked, fake.detach), (masked, real), then (masked, fake) for
    L_G; each call advances the spectral-norm vectors once, from the pre-update D params."""
    config = smoke_config()
    setup = train_state.build_setup(config)
    state = jax.jit(functools.partial(train_state.init_train_state, setup, crop_size=64))(
        jax.random.key(0)
    )
    batch = random_batch(config)
    step = jax.jit(
        functools.partial(train_steps.train_step, setup=setup, stage=config_lib.GAN, stage_start=0)
    )
    new_state, step_metrics = step(state, batch, None)
    assert bool(step_metrics["finite"]) and "d_loss" in step_metrics

    @jax.jit  # one program: run op by op, the networks compile hundreds of small ones
    def spectral_after_each_call(state: train_state.TrainState, batch: dict) -> list:
        target, mask, masked = train_steps.prepare_batch(batch)
        fake = setup.generator.apply({"params": state.g_params}, masked, mask, target).completed
        spectral, calls = state.d_spectral, []
        for candidate in (fake, target, fake):
            _, updated = setup.discriminator.apply(
                {"params": state.d_params, SPECTRAL_COLLECTION: spectral},
                masked,
                candidate,
                update_stats=True,
                mutable=[SPECTRAL_COLLECTION],
            )
            spectral = updated[SPECTRAL_COLLECTION]
            calls.append(spectral)
        return calls

    calls = spectral_after_each_call(state, batch)

    def max_difference(a, b) -> float:
        return max(
            float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    assert max_difference(new_state.d_spectral, calls[2]) < 1e-6
    # Two calls (or none) would be told apart: the vectors are still moving.
    assert max_difference(new_state.d_spectral, calls[1]) > 1e-4
    assert max_difference(new_state.d_spectral, state.d_spectral) > 1e-3
    with pytest.raises(ValueError, match="stage='warm'"):
        train_steps.train_step(state, batch, setup=setup, stage="warm")


def test_gan_stage_with_perceptual_and_style_losses(tmp_path):
    # The tiny torchvision-layout VGG-19 of the VGG tests, through the real converter.
    torch_file, vgg_file = tmp_path / "vgg19.pth", tmp_path / "vgg19.npz"
    torch.save(TinyTorchvisionVGG19().state_dict(), torch_file)
    convert.run_command("vgg19", str(torch_file), str(vgg_file))
    config = smoke_config(
        **{
            "warmup_steps": 0,
            "vgg_weights": str(vgg_file),
            "loss.perceptual_weight": 0.05,
            "loss.style_weight": 80.0,
            "loss.vgg_image_size": 64,  # the spec's 224 works too; 64 keeps the test fast
            "sample_every_steps": 0,
        }
    )
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(config, str(workdir))
    records = losses_by_step(workdir)
    assert sorted(records) == [1, 2]
    for record in records.values():
        assert record["stage"] == "gan"
        for key in ("g/perceptual", "g/style"):
            assert isinstance(record[key], float) and np.isfinite(record[key]), (key, record)
            assert record[key] > 0, (key, record)


@pytest.fixture
def converted_discriminator(tmp_path) -> Path:
    """A reference discriminator state dict (smoke widths) converted by the CLI's code."""
    pth, out = tmp_path / "latest_net_D.pth", tmp_path / "warmup_D"
    state_dict = reference_discriminator_state_dict(ndf=8, seed=3)
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, pth)
    convert.run_command("torch-discriminator", str(pth), str(out))
    return out


def test_init_from_both_networks_and_fresh_optimizer_at_the_gan_stage(
    tmp_path, converted_discriminator
):
    """Spec 5.5: the GAN stage starts from given G and D weights; the warm-up -> GAN switch
    restarts G's optimizer (its Adam count and schedule) even with init_from set."""
    base = smoke_config()
    setup = train_state.build_setup(base)
    generator_state = jax.jit(functools.partial(train_state.init_train_state, setup, crop_size=64))(
        jax.random.key(7)
    )
    generator_dir = tmp_path / "warmup_G"
    checkpointing.save_generator(
        generator_dir, {"params": generator_state.g_params}, config_lib.architecture(base)
    )
    _, converted = checkpointing.load_discriminator(converted_discriminator)

    config = smoke_config(
        init_from=str(generator_dir), init_discriminator_from=str(converted_discriminator)
    )
    mesh = sharding.create_mesh()
    start = train_lib.initial_state(config, setup, mesh)
    assert_trees_equal(start.g_params, generator_state.g_params)
    assert_trees_equal(start.d_params, converted["params"])
    assert_trees_equal(start.d_spectral, converted[SPECTRAL_COLLECTION])

    workdir = tmp_path / "run"
    state = train_lib.train_and_evaluate(config, str(workdir))
    assert int(state.g_opt_state[0].count) == 2  # the GAN steps only, not warm-up + GAN
    assert int(state.d_opt_state[0].count) == 2
    # Two Adam steps (lr 4e-4) from the converted discriminator (weights ~ N(0, 1)), not from
    # a fresh one.
    moved = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(state.d_params), jax.tree.leaves(converted["params"]), strict=True
        )
    )
    assert moved < 1e-2

    # A training workdir works as a source too.
    from_run = train_lib.initial_state(
        smoke_config(init_discriminator_from=str(workdir)), setup, mesh
    )
    assert_trees_equal(from_run.d_params, state.d_params)
    assert_trees_equal(from_run.d_spectral, state.d_spectral)

    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=re.escape(f"init_discriminator_from='{missing}'")):
        train_lib.initial_state(smoke_config(init_discriminator_from=str(missing)), setup, mesh)
    wider = smoke_config(
        init_discriminator_from=str(converted_discriminator), **{"discriminator.features": 16}
    )
    with pytest.raises(ValueError, match=r"warmup_D' holds a discriminator with .*'features': 8"):
        train_lib.initial_state(wider, train_state.build_setup(wider), mesh)
    with pytest.raises(FileNotFoundError, match=r"init_from=.*holds no generator"):
        train_lib.initial_state(smoke_config(init_from=str(converted_discriminator)), setup, mesh)


def assert_trees_equal(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_config_is_locked_and_every_config_file_loads(tmp_path):
    typo = tmp_path / "typo.py"
    typo.write_text(
        "from deepgin_jax.config import default_config\n"
        "def get_config(variant=None):\n"
        "    config = default_config()\n"
        "    config.optim.g_lrr = 2e-4\n"
        "    return config\n"
    )
    module = load_module(typo)
    with pytest.raises(AttributeError, match="g_lrr"):
        module.get_config()
    with pytest.raises(AttributeError, match="sample_evry_steps"):
        config_lib.default_config().sample_evry_steps = 5
    for path in sorted((REPO / "configs").glob("*.py")):
        for variant in (None, "smoke", "bf16", "smoke,bf16", "smoke,paper_losses"):
            config = load_module(path).get_config(variant)
            assert config.is_locked, path
            if variant and "smoke" in variant:
                config_lib.validate_config(config)
                blocks = (config.model.num_coarse_blocks, config.model.num_refine_blocks)
                assert (config.model.base_features, blocks) == (16, (1, 1)), path
            assert config.optim.decay_steps % config.optim.decay_every == 0, path
            # The reference's clipping and the initialisation that trains, in every config.
            assert config.optim.g_clip_norm == 3.0, path
            assert config.model.init_scheme == "residual", path
    paper = load_module(REPO / "configs" / "ade20k.py").get_config("smoke,paper_losses").loss
    assert (paper.style_mode, paper.tv_mode, paper.vgg_taps) == ("l1", "l1", "paper")
    assert paper.discriminator_scale == 1.0 and paper.vgg_layer_weights == (1.0,) * 5
    assert paper.style_weight == 0.0  # the smoke variant's weights stay


def test_the_paper_schedules_are_written_in_epochs():
    # Spec 5.3: 10 warm-up epochs, then 10 at the base rate and 90 decaying once an epoch.
    ade20k = load_module(REPO / "configs" / "ade20k.py").get_config()
    assert (ade20k.warmup_steps, ade20k.gan_steps) == (25_820, 258_200)
    optim = ade20k.optim
    assert (optim.constant_steps, optim.decay_steps, optim.decay_every) == (25_820, 232_380, 2_582)
    celebahq = load_module(REPO / "configs" / "celebahq.py").get_config()
    assert (celebahq.warmup_steps, celebahq.gan_steps) == (67_500, 675_000)
    optim = celebahq.optim
    assert (optim.constant_steps, optim.decay_steps, optim.decay_every) == (67_500, 607_500, 6_750)


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero_frequencies_and_schedule_warning(caplog):
    config_lib.validate_config(smoke_config(sample_every_steps=0, checkpoint_every_steps=0))
    with pytest.raises(ValueError, match="log_every_steps must be >= 1, got 0"):
        config_lib.validate_config(smoke_config(log_every_steps=0))
    with pytest.raises(ValueError, match="sample_every_steps must be >= 0, got -1"):
        config_lib.validate_config(smoke_config(sample_every_steps=-1))
    with caplog.at_level(logging.WARNING, logger="absl"):
        config_lib.validate_config(smoke_config())
        assert "gan_steps" not in caplog.text
        with pytest.raises(ValueError, match="decay_every must be >= 1 and divide"):
            config_lib.validate_config(smoke_config(**{"optim.decay_every": 0}))
        with pytest.raises(ValueError, match="decay_every=2, decay_steps=1"):
            config_lib.validate_config(smoke_config(**{"optim.decay_every": 2}))
        config_lib.validate_config(smoke_config(gan_steps=5))
    assert "= 1 + 1 = 2, but gan_steps = 5" in caplog.text
    assert "ends its decay before the last GAN steps" in caplog.text


def test_the_warmup_checkpoint_is_kept_beside_the_latest(tmp_path):
    config = smoke_config(checkpoint_every_steps=1, keep_checkpoints=1, sample_every_steps=0)
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(config, str(workdir))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert checkpointing.read_meta(workdir / "checkpoints" / "2")["step"] == 2
    model, _ = checkpointing.load_generator(workdir / "checkpoints" / "2")
    assert model.base_features == 16


def test_every_logged_and_checkpointed_step_reaches_the_metrics(tmp_path):
    # Checkpoints at 2 and 4, logs at 3 and at the last step; sample grids off.
    config = smoke_config(log_every_steps=3, checkpoint_every_steps=2, sample_every_steps=0)
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(config, str(workdir))
    records = metric_writers.read_metrics(workdir)
    assert [r["step"] for r in records] == [2, 3, 4]
    assert all("g_loss" in r and "images_per_second" in r for r in records)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert not (workdir / "samples").exists()


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path, monkeypatch):
    write_scalars = metric_writers.MetricWriter.write_scalars

    def interrupt_after_step_1(self, step, scalars):
        write_scalars(self, step, scalars)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in the terminal

    monkeypatch.setattr(metric_writers.MetricWriter, "write_scalars", interrupt_after_step_1)
    workdir = tmp_path / "run"
    # The default handler, or SIG_IGN where the suite runs as a background job.
    handler_before = signal.getsignal(signal.SIGINT)
    try:
        state = train_lib.train_and_evaluate(
            smoke_config(checkpoint_every_steps=0, sample_every_steps=0), str(workdir)
        )
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C interrupted training without saving a checkpoint")
    # Stopped within a step of the signal (the run has 4), with a checkpoint of that step.
    stopped = int(state.step)
    assert stopped in (1, 2)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(stopped)]
    assert checkpointing.read_meta(workdir)["step"] == stopped
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_resume_checks_the_saved_config_and_drops_later_metric_records(smoke_run, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run[1], workdir)  # a smoke run, as trained with the defaults
    first = losses_by_step(workdir)
    # As if the run had been killed after step 4's metrics but before its checkpoint.
    shutil.rmtree(workdir / "checkpoints" / "4")

    with pytest.raises(ValueError, match="warmup_steps: saved 2, now 1") as error:
        train_lib.train_and_evaluate(
            smoke_config(warmup_steps=1, **{"model.base_features": 8}), str(workdir)
        )
    assert "model.base_features: saved 16, now 8" in str(error.value)
    with pytest.raises(ValueError, match=r"data\.items_per_batch: saved 2, now 4"):
        train_lib.train_and_evaluate(smoke_config(**{"data.items_per_batch": 4}), str(workdir))
    assert json.loads((workdir / "config.json").read_text())["warmup_steps"] == 2

    with caplog.at_level(logging.WARNING, logger="absl"):
        train_lib.train_and_evaluate(smoke_config(log_every_steps=2), str(workdir))
    assert "log_every_steps: saved 1, now 2" in caplog.text
    records = metric_writers.read_metrics(workdir)
    losses = [r["step"] for r in records if "g_loss" in r]
    assert losses == [1, 2, 4], "step 3 and 4 of the first run must be dropped, 4 rewritten"
    assert [r["step"] for r in records if "sample/psnr" in r] == [2, 4]
    assert losses_by_step(workdir)[4]["g_loss"] == first[4]["g_loss"]


def run_on_fake_devices(script: str, devices: int) -> dict:
    """Runs `script` in a process with `devices` CPU devices; returns its `REPORT` JSON line."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT"))
    return json.loads(line.removeprefix("REPORT"))


def free_slurm_job_id() -> str:
    """A job id whose coordinator port (JAX: 61440 + id % 4096) is free on this machine. Each
    xdist worker searches from its own place, so that two tests that start at the same moment
    on two workers do not both take the first free port."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    for offset in range(4096):
        job_id = 1000 + (worker * 512 + offset) % 4096
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job_id % 4096))
            except OSError:
                continue
        return str(job_id)
    raise RuntimeError("no free port in 61440-65535")


def test_slurm_launcher_trains_two_processes_and_sigterm_to_one_stops_both_at_one_checkpoint(
    tmp_path,
):
    """launch/slurm.sbatch with a stand-in srun: two processes form one JAX job (CPU, gloo).
    Saving is collective: a signal that reaches one process of the job must stop every process
    after the same step, with one checkpoint written by all of them."""
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
        "--config.gan_steps=500",
        "--config.checkpoint_every_steps=0",
        "--config.sample_every_steps=0",
        *(f"--config.{k}={v}" for k, v in ONE_BLOCK_NETWORK.items()),
    ]
    logs = [tmp_path / f"task{i}.log" for i in range(2)]
    launcher = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not any(s >= 3 for s in logged_steps(workdir)):
            assert launcher.poll() is None, read_logs(logs)
            assert time.monotonic() < deadline, "no third step within 10 minutes"
            time.sleep(0.1)
        # Task 1 only (the stand-in srun wrote its process id); process 0 writes the logs.
        os.kill(int((tmp_path / "task1.pid").read_text()), signal.SIGTERM)
        launcher.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a process did not exit after the SIGTERM:\n{read_logs(logs)}")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 0, read_logs(logs)
    texts = [log.read_text() for log in logs]
    assert "JAX process 0/2" in texts[0] and "JAX process 1/2" in texts[1]
    saved = {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}
    stopped = max(saved)
    assert saved == {1, stopped} and 3 < stopped < 501, saved  # the warm-up's end, the stop
    assert "SIGTERM received" in texts[1] and "SIGTERM received" not in texts[0]
    assert "another process received a stop signal" in texts[0]
    for text in texts:
        assert f"stopped at step {stopped} of 501" in text
    meta = checkpointing.read_meta(workdir)
    assert meta["step"] == stopped and meta["stage"] == "gan"
    assert max(logged_steps(workdir)) == stopped
    records = losses_by_step(workdir)
    assert [records[s]["stage"] for s in (1, 2)] == ["warmup", "gan"]
    _, variables = checkpointing.load_generator(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables["params"]))


def logged_steps(workdir: Path) -> list[int]:
    path = workdir / metric_writers.METRICS_FILE
    text = path.read_text() if path.is_file() else ""
    # Complete lines only: the last one may be half written.
    return [json.loads(line)["step"] for line in text.split("\n")[:-1] if line]


def read_logs(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
