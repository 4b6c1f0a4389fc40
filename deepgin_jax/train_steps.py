"""The train steps of both stages as pure functions `(state, batch) -> (state, metrics)`.

Stage 1, the L1 warm-up (paper sec. 5.1): the generator alone on the coarse and output L1
terms. Stage 2, the GAN stage: generator and discriminator on all losses (spec 5.1-5.3). Jit
them with the other arguments bound (`functools.partial`); the loop in `train_lib` shards the
batch over the mesh's data axis and replicates and donates the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from deepgin_jax import losses, metrics
from deepgin_jax.config import GAN, WARMUP
from deepgin_jax.models import SPECTRAL_COLLECTION
from deepgin_jax.models.generator import DeepGINOutput
from deepgin_jax.train_state import Setup, TrainState

Array = jax.Array
PyTree = Any
Metrics = dict[str, Array]


def prepare_batch(batch: Mapping[str, Array]) -> tuple[Array, Array, Array]:
    """uint8 batch -> (target GT [B,H,W,3] in [0,1], mask M [B,H,W,1] in {0,1}, masked image
    I_in with white holes), on the device."""
    target = batch["image"].astype(jnp.float32) / 255.0
    mask = batch["mask"].astype(jnp.float32)
    return target, mask, target * (1.0 - mask) + mask


def clip_gradients(grads: PyTree, max_norm: float, norm: Array) -> PyTree:
    """`torch.nn.utils.clip_grad_norm_`: scales by min(1, max_norm / (norm + 1e-6))."""
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads)


def train_step(
    state: TrainState,
    batch: Mapping[str, Array],
    vgg: Callable | None = None,
    *,
    setup: Setup,
    stage: str,
    stage_start: int = 0,
    clip_norm: float = 0.0,
    clip_includes_discriminator: bool = True,
) -> tuple[TrainState, Metrics]:
    """`train_step(state, batch) -> (state, metrics)` of either stage (spec 5).

    A batch with a "weight" [B] (padding, `data.pipeline.BatchLayout`) gives every loss term
    as the mean over its weight-1 samples: the same loss and gradients as those samples alone.

    `stage` (WARMUP or GAN) picks `warmup_step` or `gan_step`; bind it and the other keywords
    with `functools.partial` before `jax.jit` (one compiled program per stage). `vgg` is only
    used by the GAN stage; `stage_start` is the step the GAN stage starts at.
    """
    if stage == WARMUP:
        return warmup_step(state, batch, setup=setup, clip_norm=clip_norm)
    if stage == GAN:
        return gan_step(
            state,
            batch,
            vgg,
            setup=setup,
            stage_start=stage_start,
            clip_norm=clip_norm,
            clip_includes_discriminator=clip_includes_discriminator,
        )
    raise ValueError(f"stage={stage!r}; expected {WARMUP!r} or {GAN!r}")


def warmup_step(
    state: TrainState, batch: Mapping[str, Array], *, setup: Setup, clip_norm: float = 0.0
) -> tuple[TrainState, Metrics]:
    """One L1-only generator step, G_COARSE_L1 + G_OUT_L1 (paper sec. 5.1, spec 5.1); the
    gradient is clipped to a global norm of `clip_norm` when it is > 0."""
    target, mask, masked = prepare_batch(batch)

    def loss_fn(g_params: PyTree) -> tuple[Array, Metrics]:
        outputs = setup.generator.apply({"params": g_params}, masked, mask, target)
        return losses.generator_loss(
            outputs, target, mask, None, None, setup.warmup_loss_config, batch.get("weight")
        )

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    grad_norm = optax.tree.norm(grads)
    if clip_norm > 0:
        grads = clip_gradients(grads, clip_norm, grad_norm)
    updates, g_opt_state = setup.g_warmup_tx.update(grads, state.g_opt_state, state.g_params)
    new_state = state.replace(
        step=state.step + 1,
        g_params=optax.apply_updates(state.g_params, updates),
        g_opt_state=g_opt_state,
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    step_metrics = {"g_loss": loss, **_prefixed("g/", terms), "g_grad_norm": grad_norm}
    return _keep_if_finite(finite, new_state, state), {**step_metrics, "finite": finite}


def gan_step(
    state: TrainState,
    batch: Mapping[str, Array],
    vgg: Callable | None,
    *,
    setup: Setup,
    stage_start: int,
    clip_norm: float,
    clip_includes_discriminator: bool,
) -> tuple[TrainState, Metrics]:
    """One step of the GAN stage in the reference's order (spec 5.3).

    One generator forward (I_c, I_o, I_comp) = G(I_in, M); L_D (spec 5.2) from D(I_in,
    I_comp.detach) and D(I_in, GT); L_G (spec 5.1) with the adversarial term from D(I_in,
    I_comp). Both use D's parameters from before this step's update, and the spectral-norm
    vectors advance once per D call (three times). G's gradient is clipped to a global norm of
    `clip_norm` when it is > 0 (the reference after 2020-09-11: 3.0, over G's gradients and,
    with `clip_includes_discriminator`, the D gradients that L_G produces); D's is not.
    """
    target, mask, masked = prepare_batch(batch)
    # (I_c, I_o, I_comp) = G(I_in, M), and the pullback from d L_G / d outputs to G's params.
    outputs, generator_vjp = jax.vjp(
        lambda g_params: setup.generator.apply({"params": g_params}, masked, mask, target),
        state.g_params,
    )
    # L_D and its gradient in D's parameters, on I_comp.detach.
    fake = jax.lax.stop_gradient(outputs.completed)
    weight = batch.get("weight")
    d_loss_fn = functools.partial(
        _discriminator_loss, setup=setup, masked=masked, target=target, weight=weight
    )
    (d_loss, (d_terms, spectral)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state.d_params, state.d_spectral, fake
    )
    # L_G and its gradients in G's outputs and (for the clipping norm only) in D's parameters.
    g_loss_fn = functools.partial(
        _generator_loss,
        setup=setup,
        masked=masked,
        mask=mask,
        target=target,
        vgg=vgg,
        weight=weight,
    )
    (g_loss, (g_terms, spectral)), (output_grads, d_grads_from_g) = jax.value_and_grad(
        g_loss_fn, argnums=(0, 1), has_aux=True
    )(outputs, state.d_params, spectral)
    (g_grads,) = generator_vjp(output_grads)

    # clip_grad_norm_(max_norm=clip_norm) on G, then one Adam step for G and one for D.
    g_grad_norm, d_grad_norm = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
    if clip_norm > 0:
        norm = g_grad_norm
        if clip_includes_discriminator:
            norm = jnp.sqrt(g_grad_norm**2 + optax.tree.norm(d_grads_from_g) ** 2)
        g_grads = clip_gradients(g_grads, clip_norm, norm)
    g_updates, g_opt_state = setup.g_tx.update(g_grads, state.g_opt_state, state.g_params)
    d_updates, d_opt_state = setup.d_tx.update(d_grads, state.d_opt_state, state.d_params)
    new_state = state.replace(
        step=state.step + 1,
        g_params=optax.apply_updates(state.g_params, g_updates),
        g_opt_state=g_opt_state,
        d_params=optax.apply_updates(state.d_params, d_updates),
        d_spectral=spectral,
        d_opt_state=d_opt_state,
    )
    finite = (
        jnp.isfinite(g_loss)
        & jnp.isfinite(d_loss)
        & jnp.isfinite(g_grad_norm)
        & jnp.isfinite(d_grad_norm)
    )
    stage_step = state.step - stage_start
    step_metrics = {
        "g_loss": g_loss,
        **_prefixed("g/", g_terms),
        "d_loss": d_loss,
        **_prefixed("d/", d_terms),
        "g_grad_norm": g_grad_norm,
        "d_grad_norm": d_grad_norm,
        "g_lr": setup.g_schedule(stage_step),
        "d_lr": setup.d_schedule(stage_step),
    }
    return _keep_if_finite(finite, new_state, state), {**step_metrics, "finite": finite}


def _discriminate(
    setup: Setup, d_params: PyTree, spectral: PyTree, masked: Array, candidate: Array
) -> tuple[Any, PyTree]:
    """D_s(I_in, candidate) at every scale, advancing the spectral-norm vectors once."""
    logits, updated = setup.discriminator.apply(
        {"params": d_params, SPECTRAL_COLLECTION: spectral},
        masked,
        candidate,
        update_stats=True,
        mutable=[SPECTRAL_COLLECTION],
    )
    return logits, updated[SPECTRAL_COLLECTION]


def _discriminator_loss(
    d_params: PyTree,
    spectral: PyTree,
    fake: Array,
    *,
    setup: Setup,
    masked: Array,
    target: Array,
    weight: Array | None,
) -> tuple[Array, tuple[Metrics, PyTree]]:
    """L_D = 0.5 sum_s [mean relu(1 - D_s(I_in, GT)) + mean relu(1 + D_s(I_in, I_comp))]
    (spec 5.2), D on the fake first, as the reference. Returns (L_D, (terms, spectral))."""
    fake_logits, spectral = _discriminate(setup, d_params, spectral, masked, fake)
    real_logits, spectral = _discriminate(setup, d_params, spectral, masked, target)
    loss, terms = losses.discriminator_loss(real_logits, fake_logits, setup.loss_config, weight)
    return loss, (terms, spectral)


def _generator_loss(
    outputs: DeepGINOutput,
    d_params: PyTree,
    spectral: PyTree,
    *,
    setup: Setup,
    masked: Array,
    mask: Array,
    target: Array,
    vgg: Callable | None,
    weight: Array | None,
) -> tuple[Array, tuple[Metrics, PyTree]]:
    """L_G = G_GAN + G_COARSE_L1 + G_OUT_L1 + G_TV + G_STYLE + G_VGG (spec 5.1), G_GAN from
    D_s(I_in, I_comp) not detached. Returns (L_G, (terms, spectral))."""
    fake_logits, spectral = _discriminate(setup, d_params, spectral, masked, outputs.completed)
    loss, terms = losses.generator_loss(
        outputs, target, mask, fake_logits, vgg, setup.loss_config, weight, setup.masks_per_item
    )
    return loss, (terms, spectral)


def _keep_if_finite(finite: Array, new: TrainState, old: TrainState) -> TrainState:
    """`new`, or `old` with `new`'s step when the step produced a non-finite loss or gradient:
    the update is skipped, the step still counts."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old.replace(step=new.step))


def _prefixed(prefix: str, terms: Mapping[str, Array]) -> Metrics:
    return {f"{prefix}{k}": v for k, v in terms.items()}


def generate(g_params: PyTree, batch: Mapping[str, Array], *, setup: Setup) -> dict[str, Array]:
    """The generator's outputs on a batch, plus PSNR/SSIM/L1 of the completed image."""
    target, mask, masked = prepare_batch(batch)
    outputs = setup.generator.apply({"params": g_params}, masked, mask, target)
    completed = jnp.clip(outputs.completed, 0.0, 1.0)
    weight = {"weight": batch["weight"]} if "weight" in batch else {}
    return {
        **weight,
        "masked": masked,
        "coarse": jnp.clip(outputs.coarse, 0.0, 1.0),
        "completed": completed,
        "target": target,
        "psnr": metrics.psnr(completed, target),
        "ssim": metrics.ssim(completed, target),
        "l1": metrics.l1_error(completed, target),
    }
