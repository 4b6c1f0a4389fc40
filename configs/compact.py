"""DeepGIN-compact: the model that ships with the package, trained on two CPU cores.

The paper's generator (both stages, SPD blocks, multi-scale self-attention, back projection) at
a quarter of its width (base 16), trained on 128x128 random crops (0.25-1 of a photo's short
side) of a folder of photos, three masks per photo (box, cellular automata, free-form strokes
scaled to 128 px): the L1 warm-up, then the GAN stage with both discriminators and the VGG-19
perceptual and style losses (taken at 128 px). README, "Results", says how it was trained:

    python -m deepgin_jax.pretrained
    python -m deepgin_jax.train --config=configs/compact.py --workdir=~/runs/compact \\
        --config.data.folder=/path/to/photos/train

The shipped release then resumed that run with a longer GAN stage (a warm restart to step
19,200): add `--config.gan_steps=7200 --config.optim.decay_steps=6600` to the same command.
"""

from deepgin_jax.config import apply_variant, default_config


def get_config(variant: str | None = None):
    config = default_config()
    config.model.base_features = 16
    config.discriminator.features = 16
    config.data.folder = ""  # set on the command line: a folder of training photos
    config.data.dataset = ""  # no prepared dataset: without a folder the error asks for one
    config.data.augmentation = "crops"
    config.data.crop_size = 128
    config.data.crop_scale = (0.25, 1.0)
    config.data.scale_strokes = True
    config.data.items_per_batch = 2
    config.data.num_workers = 0
    config.data.num_threads = 2
    config.loss.vgg_image_size = 128
    config.optim.g_lr = 2e-4
    config.optim.d_lr = 8e-4
    config.warmup_steps = 12_000
    config.gan_steps = 3_400
    config.optim.constant_steps = 600
    config.optim.decay_steps = 2_800
    config.optim.decay_every = 1
    config.log_every_steps = 25
    config.sample_every_steps = 1_000
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = 2
    return apply_variant(config, variant)
