"""The paper's run: AIM 2020 ADE20K, 10 warm-up + 100 GAN epochs, batch 4 images x 3 masks.

python -m deepgin_jax.train --config=configs/ade20k.py --workdir=runs/ade20k
python -m deepgin_jax.train --config=configs/ade20k.py:smoke --workdir=/tmp/smoke
"""

from deepgin_jax.config import apply_variant, default_config


def get_config(variant: str | None = None):
    return apply_variant(default_config(), variant)
