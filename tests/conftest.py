"""Shared fixtures. Compiling a network on the CPU costs seconds, so tiny models are made once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgin_jax.models import DeepGIN

TINY_WIDTH = 16  # base_features of the tiny generator used across the suite


def masked_inputs(n: int, h: int, w: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """A random image with white holes and its mask: a block and a band along the bottom."""
    rng = np.random.default_rng(seed)
    image = rng.random((n, h, w, 3), dtype=np.float32)
    mask = np.zeros((n, h, w, 1), np.float32)
    mask[:, h // 4 : h // 2, w // 8 : w // 2] = 1
    mask[:, -6:, :] = 1
    return jnp.asarray(image * (1 - mask) + mask), jnp.asarray(mask)


@pytest.fixture(scope="session")
def tiny_generator() -> tuple[DeepGIN, dict]:
    """(model, variables) of a DeepGIN with base width 16."""
    model = DeepGIN(base_features=TINY_WIDTH)
    masked, mask = masked_inputs(1, 16, 16)
    return model, jax.jit(model.init)(jax.random.key(0), masked, mask)
