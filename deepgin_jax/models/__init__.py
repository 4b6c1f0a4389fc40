"""DeepGIN's networks: the generator, the discriminator and their building blocks."""

from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION, MultiScaleDiscriminator
from deepgin_jax.models.generator import DeepGIN, DeepGINOutput

__all__ = ["SPECTRAL_COLLECTION", "DeepGIN", "DeepGINOutput", "MultiScaleDiscriminator"]
