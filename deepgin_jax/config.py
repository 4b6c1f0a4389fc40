"""Every training setting with its default: the paper's ADE20K run (spec 5, paper sec. 5).

Config files under `configs/` start from `default_config()` and change a few keys; a string
argument picks a variant (`--config=configs/ade20k.py:smoke`). The config is locked: setting a
key that does not exist, in a config file, a variant or a `--config.x=y` override, is an error
naming the key (a new setting gets its default here first).
"""

from __future__ import annotations

import ml_collections

from deepgin_jax.data.pipeline import default_data_config
from deepgin_jax.losses import default_loss_config

# The AIM 2020 ADE20K list has 10,330 images: 2,582 steps of 4 images per epoch (spec 5.3).
ADE20K_STEPS_PER_EPOCH = 10_330 // 4
VARIANTS = ("smoke", "bf16", "paper_losses")


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

    config.data = default_data_config()
    config.data.dataset = "ade20k/aim2020"
    config.loss = default_loss_config()
    # VGG-19 for the perceptual and style losses: a file from `python -m deepgin_jax.convert`.
    config.vgg_weights = ""

    config.optim = ml_collections.ConfigDict()
    config.optim.g_lr = 1e-4
    config.optim.d_lr = 4e-4
    config.optim.b1 = 0.5
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    # GAN stage: constant for 10 epochs, then linear decay over 90 (paper sec. 5.1, spec 5.3).
    # constant_steps + decay_steps should equal gan_steps (a warning otherwise). The rate drops
    # every decay_every steps: once an epoch as the reference (ending at 1/90 of it); 1 = every
    # step, down to zero. decay_steps must be a multiple of it.
    config.optim.constant_steps = 10 * ADE20K_STEPS_PER_EPOCH
    config.optim.decay_steps = 90 * ADE20K_STEPS_PER_EPOCH
    config.optim.decay_every = ADE20K_STEPS_PER_EPOCH
    # The generator's gradient is clipped to this global norm in both stages, as the reference
    # after 2020-09-11 (spec 5.3); 0 = no clipping (the challenge-time code).
    config.optim.g_clip_norm = 3.0
    # The reference's norm also counts the discriminator gradients that L_G produces.
    config.optim.clip_includes_discriminator = True

    config.warmup_steps = 10 * ADE20K_STEPS_PER_EPOCH  # L1-only warm-up (paper: 10 epochs)
    config.gan_steps = 100 * ADE20K_STEPS_PER_EPOCH
    # Start a fresh run from other weights (spec 5.5: the reference's GAN stage starts from the
    # warm-up's G and D). Each takes a converted reference model (`python -m deepgin_jax.convert
    # torch-generator|torch-discriminator`), a training checkpoint step or a training workdir.
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
    config.lock()
    return config


def apply_variant(
    config: ml_collections.ConfigDict, variant: str | None
) -> ml_collections.ConfigDict:
    """Applies comma-separated variants: `smoke` (a seconds-long CPU run), `bf16`, and
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
    """A tiny network on the bundled photos at 64x64, for tests and a first look."""
    from deepgin_jax.data import SAMPLES_DIR

    config.model.base_features = 16
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
