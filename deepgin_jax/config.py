"""Every training setting with its default (the paper's ADE20K run, spec 5, paper sec. 5), and
the checks a config must pass before training starts or resumes.

Config files under `configs/` start from `default_config()` and change a few keys; a string
argument picks a variant (`--config=configs/ade20k.py:smoke`). The config is locked: setting a
key that does not exist, in a config file, a variant or a `--config.x=y` override, is an error
naming the key (a new setting gets its default here first). `validate_config` checks the values
a lock cannot (and that the VGG-19 file the losses need exists); `check_resume_config` compares
a resumed run's config with the saved one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from flax import traverse_util

from deepgin_jax import losses
from deepgin_jax.data import pipeline
from deepgin_jax.generator_fields import ARCHITECTURE_FIELDS
from deepgin_jax.losses import default_loss_config
from deepgin_jax.models.attention import validate_implementation
from deepgin_jax.models.generator import INIT_SCHEMES
from deepgin_jax.user_cache import default_vgg19_path

# The AIM 2020 ADE20K list has 10,330 images: 2,582 steps of 4 images per epoch (spec 5.3).
ADE20K_STEPS_PER_EPOCH = 10_330 // 4
VARIANTS = ("smoke", "bf16", "paper_losses")
PAPER_ITEMS_PER_BATCH = 4
LR_SCALINGS = ("none", "linear", "sqrt")

# The two training stages (paper sec. 5.1): the L1 warm-up, then the GAN stage.
WARMUP, GAN = "warmup", "gan"
COMPUTE_DTYPES = ("float32", "bfloat16")
# config.model's other keys: runtime choices (its ARCHITECTURE_FIELDS define the generator).
RUNTIME_MODEL_FIELDS = ("attention_impl", "remat", "init_scheme", "init_scale")
# Config keys (besides model.<ARCHITECTURE_FIELDS> and discriminator.*) that a resumed run must
# share with the saved one: they change the batches or the step at which the stages switch.
# data.mask_types sets the samples per item (the reference's three masks, spec 5.4).
RESUME_FIXED_KEYS = ("warmup_steps", "data.items_per_batch", "data.mask_types")


def default_config() -> ml_collections.ConfigDict:
    """Every key with its default (the paper's ADE20K run), locked against new keys."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.base_features = 64
    config.model.num_coarse_blocks = 6
    config.model.num_refine_blocks = 6
    config.model.coarse_rates = (2, 3, 4, 5, 6, 8, 10, 1)
    config.model.refine_rates = (2, 3, 4, 5)
    config.model.block_type = "spd"  # spd | dilated | standard (paper Table 1)
    config.model.attention = "multiscale"  # multiscale | single | none
    config.model.back_projection = True
    config.model.coarse_only = False
    # "" (automatic: "chunked" on CPUs, jax.nn.dot_product_attention's choice elsewhere),
    # "xla", "cudnn" (the fused kernel on NVIDIA GPUs) or "chunked" (see models/attention.py).
    config.model.attention_impl = ""
    config.model.remat = False  # rematerialise the residual blocks to save memory
    # Initial kernels (models.generator.INIT_SCHEMES): "residual" = Kaiming-normal, times
    # init_scale on the convolutions that close a residual branch (trains from scratch);
    # "reference" = every convolution times init_scale (spec 5.6; with 0.1 it does not learn
    # from scratch: README, "Training"). Biases start at zero.
    config.model.init_scheme = "residual"
    config.model.init_scale = 0.1

    # float32 or bfloat16 activations; parameters, optimizer state and losses stay float32.
    config.compute_dtype = "float32"

    config.discriminator = ml_collections.ConfigDict()
    config.discriminator.features = 64
    config.discriminator.num_layers = 2
    config.discriminator.num_scales = 2

    config.data = pipeline.default_data_config()
    config.data.dataset = "ade20k/aim2020"
    config.loss = default_loss_config()
    # VGG-19 for the perceptual and style losses: where `python -m deepgin_jax.pretrained` writes
    # it by default (~/.cache/deepgin_jax/pretrained/vgg19.npz, or $DEEPGIN_PRETRAINED_DIR), or
    # a file from `python -m deepgin_jax.convert vgg19`.
    config.vgg_weights = str(default_vgg19_path())

    config.optim = ml_collections.ConfigDict()
    config.optim.g_lr = 1e-4
    config.optim.d_lr = 4e-4
    config.optim.b1 = 0.5
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    # The paper trains on PAPER_ITEMS_PER_BATCH images (x 3 masks) a step, on any number of
    # devices (the batch is padded to split). A larger data.items_per_batch is a change of
    # recipe, and this rule scales both learning rates with it: "none" (as set), "linear"
    # (x items_per_batch / 4) or "sqrt" (x its square root).
    config.optim.lr_scaling = "none"
    # GAN stage: constant for constant_steps, then a linear decay over decay_steps (set in
    # epochs by `epoch_schedule` below). constant_steps + decay_steps should equal gan_steps (a
    # warning otherwise). The rate drops every decay_every steps: once an epoch as the
    # reference (ending at 1/90 of it); 1 = every step, down to zero. decay_steps must be a
    # multiple of it.
    config.optim.constant_steps = 0
    config.optim.decay_steps = 0
    config.optim.decay_every = 1
    # The generator's gradient is clipped to this global norm in both stages, as the reference
    # after 2020-09-11 (spec 5.3); 0 = no clipping (the challenge-time code).
    config.optim.g_clip_norm = 3.0
    # The reference's norm also counts the discriminator gradients that L_G produces.
    config.optim.clip_includes_discriminator = True

    config.warmup_steps = 0  # the L1-only warm-up
    config.gan_steps = 0
    # Start a fresh run from other weights (spec 5.5: the reference's GAN stage starts from the
    # warm-up's G and D). Each takes a converted reference model (`python -m deepgin_jax.convert
    # torch-generator|torch-discriminator`), a training checkpoint step or a training workdir;
    # init_from also whatever --checkpoint takes (`shipped.load_any_generator`: a shipped
    # folder or its generator.npz, or "shipped" for the package's model).
    # Ignored when the workdir already holds checkpoints (the run resumes instead).
    config.init_from = ""  # generator parameters
    config.init_discriminator_from = ""  # discriminator parameters and spectral-norm vectors

    # Frequencies in steps. log_every_steps must be >= 1 (the non-finite check runs when
    # logging). sample_every_steps = 0 writes no sample grids; checkpoint_every_steps = 0 saves
    # only at the end of the run and when stopped (SIGTERM, Ctrl-C). The last step is always
    # logged and checkpointed.
    config.log_every_steps = 50
    config.sample_every_steps = 1000
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 3
    # jax.profiler traces the steps numbered profile_first_step..profile_last_step (as logged,
    # from 1) into <workdir>/profile (TensorBoard's profile plugin, Perfetto); 0 = no trace.
    config.profile_first_step = 0
    config.profile_last_step = 0
    # XLA's quick compile (backend optimisation level 0): a CPU run starts minutes sooner, its
    # steps may run slower. `python -m deepgin_jax.train` applies it before JAX starts.
    config.fast_compile = False
    config.lock()
    # The paper: 10 warm-up epochs, then 10 constant and 90 decaying (paper sec. 5.1).
    return epoch_schedule(config, ADE20K_STEPS_PER_EPOCH)


def epoch_schedule(
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    *,
    warmup_epochs: int = 10,
    constant_epochs: int = 10,
    decay_epochs: int = 90,
) -> ml_collections.ConfigDict:
    """Sets both stages' lengths and the GAN stage's learning-rate schedule in epochs, as the
    reference counts them (spec 5.3): `warmup_epochs` of warm-up, then `constant_epochs` at the
    base rate and `decay_epochs` of linear decay, lowered once an epoch."""
    config.warmup_steps = warmup_epochs * steps_per_epoch
    config.gan_steps = (constant_epochs + decay_epochs) * steps_per_epoch
    config.optim.constant_steps = constant_epochs * steps_per_epoch
    config.optim.decay_steps = decay_epochs * steps_per_epoch
    config.optim.decay_every = steps_per_epoch
    return config


def apply_variant(
    config: ml_collections.ConfigDict, variant: str | None
) -> ml_collections.ConfigDict:
    """Applies comma-separated variants: `smoke` (a few minutes on a CPU, mostly compiling; seconds
    a step after), `bf16`, and
    `paper_losses` (the loss formulas as the paper writes them, `default_loss_config("paper")`,
    where the reference code differs; spec 10)."""
    for name in filter(None, (variant or "").split(",")):
        if name == "smoke":
            _smoke(config)
        elif name == "bf16":
            config.compute_dtype = "bfloat16"
        elif name == "paper_losses":
            # Only the formulas differ (VGG taps and layer weights, style and TV modes, the
            # hinge D scale); the loss weights, possibly set before, stay.
            paper, reference = default_loss_config("paper"), default_loss_config()
            for key in paper:
                if paper[key] != reference[key]:
                    config.loss[key] = paper[key]
        else:
            raise ValueError(f"unknown config variant {name!r}; expected one of {VARIANTS}")
    return config


def _smoke(config: ml_collections.ConfigDict) -> None:
    """A tiny network on the bundled photos at 64x64, for tests and a first look: base width
    16 and one residual block in each stage (every kind of layer is there; its steps compile in
    about 2.5 times less time than with the six of the paper)."""
    from deepgin_jax.data import SAMPLES_DIR

    config.model.base_features = 16
    config.model.num_coarse_blocks = 1
    config.model.num_refine_blocks = 1
    config.discriminator.features = 8
    config.data.folder = str(SAMPLES_DIR)
    config.data.augmentation = "reference"
    config.data.load_size = 128
    config.data.crop_size = 64
    config.data.items_per_batch = 2
    config.data.num_workers = 0
    config.loss.perceptual_weight = 0.0
    config.loss.style_weight = 0.0
    config.optim.constant_steps = 1
    config.optim.decay_steps = 1
    config.optim.decay_every = 1
    config.warmup_steps = 2
    config.gan_steps = 2
    config.log_every_steps = 1
    config.sample_every_steps = 2
    config.checkpoint_every_steps = 2
    config.keep_checkpoints = 2
    config.fast_compile = True


# ----------------------------------------------------------------------------------------------
# Checks.


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks values the config files cannot type-check; unknown keys already fail (the config
    is locked). Warns when the GAN stage's schedule does not end with it (spec 5.3)."""
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype={config.compute_dtype!r}; expected one of {list(COMPUTE_DTYPES)}"
        )
    _validate_stages(config)
    _validate_frequencies(config)
    if config.optim.lr_scaling not in LR_SCALINGS:
        raise ValueError(
            f"optim.lr_scaling={config.optim.lr_scaling!r}; expected one of {list(LR_SCALINGS)}"
        )
    _validate_profile(config)
    _validate_model(config.model)
    losses.validate_loss_config(config.loss)
    pipeline.validate_data_config(config.data)
    if config.gan_steps and needs_vgg(config.loss):
        _check_vgg_weights(config.vgg_weights)
    _warn_if_the_decay_misses_the_gan_stage(config)


def _check_vgg_weights(path: str) -> None:
    """The perceptual and style losses' VGG-19 file exists; else the error says how to make it."""
    if path and Path(path).is_file():
        return
    where = f"vgg_weights={path!r} is not a file" if path else "vgg_weights is empty"
    raise ValueError(
        f"the perceptual and style losses need VGG-19 weights, but {where}: run `python -m "
        f"deepgin_jax.pretrained` once (it writes {default_vgg19_path()}, found by default), or "
        "set --config.vgg_weights=FILE, or turn both losses off with "
        "--config.loss.perceptual_weight=0 --config.loss.style_weight=0"
    )


def lr_scale(config: ml_collections.ConfigDict) -> float:
    """The factor `optim.lr_scaling` applies to both learning rates for the configured batch."""
    ratio = config.data.items_per_batch / PAPER_ITEMS_PER_BATCH
    return {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[config.optim.lr_scaling]


def _validate_stages(config: ml_collections.ConfigDict) -> None:
    """Stage lengths and the learning-rate schedule (spec 5.3)."""
    warmup, gan, optim = config.warmup_steps, config.gan_steps, config.optim
    if warmup < 0 or gan < 0 or warmup + gan == 0:
        raise ValueError(
            "warmup_steps and gan_steps must be >= 0 and not both 0, got "
            f"warmup_steps={warmup}, gan_steps={gan}"
        )
    if optim.constant_steps < 0 or optim.decay_steps < 0:
        raise ValueError(
            "optim.constant_steps and optim.decay_steps must be >= 0, got "
            f"{optim.constant_steps} and {optim.decay_steps}"
        )
    if optim.decay_every < 1 or optim.decay_steps % optim.decay_every:
        raise ValueError(
            f"optim.decay_every must be >= 1 and divide optim.decay_steps, got decay_every="
            f"{optim.decay_every}, decay_steps={optim.decay_steps} (1 = decay every step, the "
            "steps per epoch = the reference's once-per-epoch decay)"
        )


def _validate_frequencies(config: ml_collections.ConfigDict) -> None:
    for name in ("log_every_steps", "keep_checkpoints"):
        if config[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {config[name]}")
    for name, zero in (
        ("checkpoint_every_steps", "only at the end and when stopped"),
        ("sample_every_steps", "no sample grids"),
    ):
        if config[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {config[name]} (0 = {zero})")


def _validate_profile(config: ml_collections.ConfigDict) -> None:
    first, last = config.profile_first_step, config.profile_last_step
    if (first, last) != (0, 0) and not 1 <= first <= last:
        raise ValueError(
            "profile_first_step and profile_last_step must both be 0 (no trace) or satisfy "
            f"1 <= profile_first_step <= profile_last_step, got {first} and {last}"
        )


def _validate_model(model: ml_collections.ConfigDict) -> None:
    unknown = set(model) - set(ARCHITECTURE_FIELDS) - set(RUNTIME_MODEL_FIELDS)
    if unknown:
        raise ValueError(f"unknown config.model keys: {sorted(unknown)}")
    validate_implementation(model.attention_impl or None, "model.attention_impl")
    if model.init_scheme not in INIT_SCHEMES:
        raise ValueError(f"model.init_scheme={model.init_scheme!r}; expected one of {INIT_SCHEMES}")


def _warn_if_the_decay_misses_the_gan_stage(config: ml_collections.ConfigDict) -> None:
    optim = config.optim
    schedule_steps = optim.constant_steps + optim.decay_steps
    # decay_steps = 0 asks for a constant learning rate: nothing to line up.
    if not config.gan_steps or not optim.decay_steps or schedule_steps == config.gan_steps:
        return
    logging.warning(
        "optim.constant_steps + optim.decay_steps = %d + %d = %d, but gan_steps = %d: the "
        "learning rate %s (spec 5.3 decays it over the GAN stage)",
        optim.constant_steps,
        optim.decay_steps,
        schedule_steps,
        config.gan_steps,
        "ends its decay before the last GAN steps"
        if schedule_steps < config.gan_steps
        else "never decays fully",
    )


def needs_vgg(loss_config: ml_collections.ConfigDict) -> bool:
    """Whether the perceptual or style loss is on (they need VGG-19 weights)."""
    return bool(loss_config.perceptual_weight or loss_config.style_weight)


def stage_at(step: int, config: ml_collections.ConfigDict) -> str:
    """The stage (WARMUP or GAN) that step `step` (counted from 0 over both stages) belongs to."""
    return WARMUP if step < config.warmup_steps else GAN


def architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The generator's architecture fields, JSON-friendly (saved in checkpoint metadata)."""
    fields = {k: v for k, v in config.model.to_dict().items() if k in ARCHITECTURE_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON types (tuples as lists), as saved in `config.json` and checkpoints."""
    return json.loads(config.to_json_best_effort())


def check_resume_config(
    config: ml_collections.ConfigDict, meta: Mapping[str, Any], checkpoint: str
) -> None:
    """Compares the current config with the one saved in a training checkpoint's meta
    (`checkpointing.train_meta`) before resuming.

    Raises ValueError naming every differing key that must not change (the architectures,
    `RESUME_FIXED_KEYS`) with both values; logs a warning listing the other differences (log
    frequency, learning rates, ...), which take effect from the resumed step on.
    """
    saved = _flatten(meta.get("config", {}))
    # The architecture is also recorded on its own (every training checkpoint has it).
    saved.update(_flatten({"model": meta.get("model", {})}))
    saved.update(_flatten({"discriminator": meta.get("discriminator", {})}))
    current = _flatten(config_json(config))
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


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    return traverse_util.flatten_dict(dict(tree), sep=".")
