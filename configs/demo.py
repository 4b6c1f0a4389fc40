"""A tiny DeepGIN trained for a few dozen steps on the bundled photos (`make demo`'s second half).

The network has a quarter of the paper's width (base 16 instead of 64), trains on 128x128
views, and skips the VGG losses (no VGG-19 weights are bundled); everything else is the
paper's recipe: three masks per photo, the L1 warm-up, then the GAN stage. It shows that
training runs end to end in a minute or two; the model that inpaints well is the shipped one
(`configs/compact.py`, trained for hours).

    python -m deepgin_jax.train --config=configs/demo.py --workdir=demo_out/run
"""

from deepgin_jax.config import apply_variant, default_config
from deepgin_jax.data import SAMPLES_DIR


def get_config(variant: str | None = None):
    config = default_config()
    config.model.base_features = 16
    config.discriminator.features = 16
    config.data.folder = str(SAMPLES_DIR)
    config.data.load_size = 256
    config.data.crop_size = 128
    config.data.scale_strokes = True
    config.data.items_per_batch = 2
    config.loss.perceptual_weight = 0.0
    config.loss.style_weight = 0.0
    config.optim.g_lr = 2e-4
    config.optim.d_lr = 8e-4
    config.warmup_steps = 30
    config.gan_steps = 20
    config.optim.constant_steps = 10
    config.optim.decay_steps = 10
    config.optim.decay_every = 1
    config.log_every_steps = 5
    config.sample_every_steps = 25
    config.checkpoint_every_steps = 25
    return apply_variant(config, variant)
