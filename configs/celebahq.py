"""CelebA-HQ (paper sec. 5.2): 27,000 training faces; the same networks and losses.

python -m deepgin_jax.data.prepare --dataset celebahq --manual_dir ~/downloads
python -m deepgin_jax.train --config=configs/celebahq.py --workdir=runs/celebahq
"""

from deepgin_jax.config import apply_variant, default_config

STEPS_PER_EPOCH = 27_000 // 4


def get_config(variant: str | None = None):
    config = default_config()
    config.data.dataset = "celebahq"
    config.optim.constant_steps = 10 * STEPS_PER_EPOCH
    config.optim.decay_steps = 90 * STEPS_PER_EPOCH
    config.optim.decay_every = STEPS_PER_EPOCH
    config.warmup_steps = 10 * STEPS_PER_EPOCH
    config.gan_steps = 100 * STEPS_PER_EPOCH
    return apply_variant(config, variant)
