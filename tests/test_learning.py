"""The model learns: a small generator (the smoke network: one residual block in each stage)
overfits three real photos with holes in a few hundred warm-up steps from the default
initialisation, and does not from the reference's. (Hole L1 0.46 of the flat colour's from the
default initialiser, 0.81 from the reference's; the two runs take 76 s of a cold suite, against
234 s with six blocks in each stage.)

Three bundled photos at 64x64, each with one mask (a box, cellular automata, free-form strokes
scaled to the size), are one fixed batch; 150 steps of the L1 warm-up (`train_step`, Adam,
lr 1e-3, the default gradient clipping) must drive its loss far below the start and fill each
hole with structure: an L1 error inside the holes well below that of the best flat colour (the
per-channel median), and a spatial spread inside the holes close to the photos'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgin_jax import config as config_lib
from deepgin_jax import masks, train_state, train_steps
from deepgin_jax.data import sample_image_paths
from deepgin_jax.data.transforms import resize_bicubic
from deepgin_jax.image_io import read_rgb

SIZE, STEPS = 64, 150


def fixed_batch() -> dict[str, np.ndarray]:
    images = [resize_bicubic(read_rgb(p), SIZE, SIZE) for p in sample_image_paths()[:3]]
    rng = np.random.default_rng(1)
    holes = [
        masks.generate_mask(kind, rng, SIZE, SIZE, scale_strokes=True)
        for kind in ("rect", "ca", "freeform")
    ]
    return {
        "image": np.stack(images),
        "mask": np.stack(holes)[..., None].astype(np.uint8),
    }


def hole_statistics(prediction: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Summed over the batch: L1 inside the hole of `prediction`, of the best flat fill (the
    per-channel median of the hole), and per-channel spatial std of prediction and target."""
    totals = dict.fromkeys(("l1", "flat_l1", "std", "target_std"), 0.0)
    for predicted, image, mask in zip(prediction, batch["image"], batch["mask"], strict=True):
        hole = mask[..., 0] > 0
        target = image[hole].astype(np.float32) / 255.0
        filled = predicted[hole]
        totals["l1"] += float(np.abs(filled - target).mean())
        totals["flat_l1"] += float(np.abs(np.median(target, axis=0) - target).mean())
        totals["std"] += float(filled.std(axis=0).mean())
        totals["target_std"] += float(target.std(axis=0).mean())
    return totals


def overfit(init_scheme: str) -> tuple[list[float], dict[str, float]]:
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    config.model.init_scheme = init_scheme
    config.optim.g_lr = 1e-3
    setup = train_state.build_setup(config)
    state = jax.jit(functools.partial(train_state.init_train_state, setup, crop_size=SIZE))(
        jax.random.key(0)
    )
    step = jax.jit(
        functools.partial(
            train_steps.train_step,
            setup=setup,
            stage=config_lib.WARMUP,
            clip_norm=config.optim.g_clip_norm,
        )
    )
    batch = fixed_batch()
    device_batch = jax.tree.map(jnp.asarray, batch)
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, device_batch)
        losses.append(float(metrics["g_loss"]))
    completed = jax.jit(functools.partial(train_steps.generate, setup=setup))(
        state.g_params, device_batch
    )["completed"]
    prediction = np.asarray(completed)
    return losses, hole_statistics(prediction, batch)


@pytest.fixture(scope="module")
def default_run() -> tuple[list[float], dict[str, float]]:
    return overfit(config_lib.default_config().model.init_scheme)


def test_default_initialisation_learns_to_fill_holes(default_run):
    losses, stats = default_run
    assert np.mean(losses[-10:]) < 0.25 * losses[0], losses[::25]
    assert stats["l1"] < 0.6 * stats["flat_l1"], stats
    assert stats["std"] > 0.5 * stats["target_std"], stats


def test_reference_initialisation_lags_at_the_same_settings(default_run):
    # The measurement behind the default: from the reference's initialiser (every convolution
    # at 0.1 x Kaiming) the same run ends far behind. (On the CPUs the README's curves were
    # measured on it ended at a flat fill; on Zen 5 CPUs it gets to 0.82 of the flat colour's
    # hole error, 0.476 against the default's under 0.35, after 250 steps.)
    losses, stats = overfit("reference")
    default_losses, default_stats = default_run
    assert stats["l1"] > 1.2 * default_stats["l1"], (stats, default_stats)
    assert np.mean(losses[-10:]) > np.mean(default_losses[-10:]), (
        losses[::25],
        default_losses[::25],
    )


@pytest.mark.parametrize("init_scheme", ["residual", "reference"])
def test_initial_kernels_follow_the_scheme(init_scheme):
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    config.model.init_scheme = init_scheme
    setup = train_state.build_setup(config)
    params = jax.jit(functools.partial(train_state.init_train_state, setup, crop_size=16))(
        jax.random.key(0)
    ).g_params
    base = config.model.base_features

    def relative_std(kernel: jax.Array) -> float:
        fan_in = np.prod(kernel.shape[:-1])
        return float(np.asarray(kernel).std() / np.sqrt(2.0 / fan_in))

    closing = (
        params["coarse"]["block1"]["fusion"]["kernel"],
        params["refine"]["attention_1_8"]["out"]["kernel"],
    )
    inner = (
        params["coarse"]["block1"]["branch1"]["kernel"],
        params["refine"]["enc_conv5"]["kernel"],
        params["refine"]["attention_1_8"]["theta"]["kernel"],
    )
    assert params["coarse"]["block1"]["fusion"]["kernel"].shape[-1] == 4 * base
    for kernel in closing:
        assert relative_std(kernel) == pytest.approx(0.1, rel=0.15)
    for kernel in inner:
        expected = 1.0 if init_scheme == "residual" else 0.1
        assert relative_std(kernel) == pytest.approx(expected, rel=0.15)


def test_an_unknown_init_scheme_is_an_error_naming_the_key():
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    config.model.init_scheme = "refrence"
    with pytest.raises(ValueError, match=r"model\.init_scheme='refrence'"):
        config_lib.validate_config(config)
