"""CelebA-HQ (paper sec. 5.2): 27,000 training faces; the same networks, losses and epochs.

python -m deepgin_jax.data.prepare --dataset celebahq --manual_dir ~/downloads
python -m deepgin_jax.train --config=configs/celebahq.py --workdir=runs/celebahq
"""

from deepgin_jax.config import apply_variant, default_config, epoch_schedule

STEPS_PER_EPOCH = 27_000 // 4


def get_config(variant: str | None = None):
    config = epoch_schedule(default_config(), STEPS_PER_EPOCH)
    config.data.dataset = "celebahq"
    return apply_variant(config, variant)
