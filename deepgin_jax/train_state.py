"""The train state and the static pieces of a run: the two networks, Adam for each, and the GAN
stage's learning-rate schedule (spec 5.3). Pure functions of the config; no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from deepgin_jax.config import lr_scale
from deepgin_jax.models import SPECTRAL_COLLECTION, DeepGIN, MultiScaleDiscriminator

Array = jax.Array
PyTree = Any

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `step` counts both stages together."""

    step: Array
    g_params: PyTree
    g_opt_state: PyTree
    d_params: PyTree
    d_spectral: PyTree  # the spectral-norm power-iteration vectors, advanced by every D call
    d_opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces of a run, built once from the config (`build_setup`)."""

    generator: DeepGIN
    discriminator: MultiScaleDiscriminator
    g_warmup_tx: optax.GradientTransformation
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    g_schedule: optax.Schedule
    d_schedule: optax.Schedule
    loss_config: ml_collections.ConfigDict
    warmup_loss_config: ml_collections.ConfigDict
    # Samples per photo in a batch (`data.mask_types`): the VGG-19 losses run the ground truth
    # once per photo when a batch has this layout (`losses.target_vgg_features`).
    masks_per_item: int = 1


def lr_schedule(
    base_lr: float, constant_steps: int, decay_steps: int, decay_every: int = 1
) -> optax.Schedule:
    """Constant for `constant_steps`, then a linear decay over `decay_steps` that lowers the
    rate every `decay_every` steps (spec 5.3). Every step (1): down to zero. Once an epoch, as
    the reference: epochs 1-11 at `base_lr`, then 1 - k/90 of it, ending at `base_lr`/90."""
    if decay_steps == 0:
        return optax.constant_schedule(base_lr)

    def schedule(step: Array) -> Array:
        decays = jnp.maximum(step - constant_steps, 0) // decay_every
        # Whole steps left, then one division: no float32 cancellation near the end.
        remaining = jnp.maximum(decay_steps - decays * decay_every, 0)
        return base_lr * remaining / decay_steps

    return schedule


def build_setup(config: ml_collections.ConfigDict) -> Setup:
    """The networks of `config.model`/`config.discriminator` in `config.compute_dtype`, and
    Adam(b1, b2) for each (spec 5.3): G at a constant rate in the warm-up, G and D on
    `lr_schedule` in the GAN stage, both rates scaled by `optim.lr_scaling`. The warm-up's
    losses are the L1 terms only."""
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    model_fields = _tuples(config.model.to_dict())
    model_fields["attention_impl"] = model_fields["attention_impl"] or None
    o = config.optim

    def adam(schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)

    g_lr, d_lr = o.g_lr * lr_scale(config), o.d_lr * lr_scale(config)
    g_schedule = lr_schedule(g_lr, o.constant_steps, o.decay_steps, o.decay_every)
    d_schedule = lr_schedule(d_lr, o.constant_steps, o.decay_steps, o.decay_every)
    warmup_loss = ml_collections.ConfigDict(config.loss.to_dict())
    warmup_loss.l1_only = True
    return Setup(
        generator=DeepGIN(**model_fields, dtype=dtype),
        discriminator=MultiScaleDiscriminator(**config.discriminator.to_dict(), dtype=dtype),
        g_warmup_tx=adam(optax.constant_schedule(g_lr)),
        g_tx=adam(g_schedule),
        d_tx=adam(d_schedule),
        g_schedule=g_schedule,
        d_schedule=d_schedule,
        loss_config=config.loss,
        warmup_loss_config=warmup_loss,
        masks_per_item=len(config.data.mask_types),
    )


def _tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def init_train_state(setup: Setup, rng: Array, crop_size: int) -> TrainState:
    """Fresh parameters (spec 5.6 and `config.model.init_scheme`) and optimizer states, the
    generator's for the warm-up. Jit this."""
    g_rng, d_rng = jax.random.split(rng)
    image = jnp.zeros((1, crop_size, crop_size, 3), jnp.float32)
    mask = jnp.zeros((1, crop_size, crop_size, 1), jnp.float32)
    g_params = setup.generator.init(g_rng, image, mask)["params"]
    d_variables = setup.discriminator.init(d_rng, image, image)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        g_opt_state=setup.g_warmup_tx.init(g_params),
        d_params=d_variables["params"],
        d_spectral=d_variables[SPECTRAL_COLLECTION],
        d_opt_state=setup.d_tx.init(d_variables["params"]),
    )
