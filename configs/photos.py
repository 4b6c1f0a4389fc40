"""The full-size DeepGIN on a small set of real photos (e.g. 406 training photos) on one GPU.

Random square crops at several scales (0.5-1 of the short side) resized to 256, flips, three
masks per photo; the L1 warm-up, then the GAN stage; bfloat16 activations. The perceptual and
style losses need VGG-19 weights, which the first command writes where training finds them
(README, "Pretrained networks"):

    python -m deepgin_jax.pretrained
    python -m deepgin_jax.train --config=configs/photos.py --workdir=runs/photos \
        --config.data.folder=/path/to/photos/train
"""

from deepgin_jax.config import apply_variant, default_config


def get_config(variant: str | None = None):
    config = default_config()
    config.data.folder = ""  # set on the command line: a folder of training photos
    config.data.dataset = ""  # no prepared dataset: without a folder the error asks for one
    config.data.augmentation = "crops"
    config.data.crop_scale = (0.5, 1.0)
    config.data.items_per_batch = 4
    config.data.num_workers = 8
    config.compute_dtype = "bfloat16"
    config.warmup_steps = 2_000
    config.gan_steps = 8_000
    config.optim.constant_steps = 4_000
    config.optim.decay_steps = 4_000
    config.optim.decay_every = 1
    config.log_every_steps = 50
    config.sample_every_steps = 500
    config.checkpoint_every_steps = 1_000
    return apply_variant(config, variant)
