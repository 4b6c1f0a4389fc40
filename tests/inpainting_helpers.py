"""Shared by the inference, inpainting-CLI, evaluation and benchmark tests: a tiny generator
checkpoint, written once per process, stand-in networks with the generator's call signature and
a small LPIPS file."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepgin_jax.checkpointing import save_generator
from deepgin_jax.models import DeepGIN, lpips
from deepgin_jax.weights_io import save_weights
from tests.conftest import TINY_ARCHITECTURE

SMALL_VGG_WIDTHS = (8, 8, 12, 12, 16, 16, 16, 20, 20, 20, 24, 24, 24)


def _random_leaf(rng: np.random.Generator, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    if len(leaf.shape) == 4:  # conv kernel [kh, kw, in, out]
        fan_in = int(np.prod(leaf.shape[:3]))
        return (0.5 * np.sqrt(2.0 / fan_in) * rng.standard_normal(leaf.shape)).astype(np.float32)
    return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)


@functools.cache
def tiny_checkpoint() -> Path:
    """A converted-model directory of the tiny DeepGIN (`TINY_ARCHITECTURE`) with random
    weights.

    The weights are drawn with NumPy from the abstract parameter shapes: compiling `init`
    would cost a minute on a CI machine.
    """
    model = DeepGIN(**TINY_ARCHITECTURE)
    image = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), image, mask)
    rng = np.random.default_rng(0)
    params = jax.tree.map(functools.partial(_random_leaf, rng), abstract["params"])
    root = Path(tempfile.mkdtemp(prefix="deepgin-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    save_generator(root / "tiny", {"params": params}, TINY_ARCHITECTURE)
    return root / "tiny"


def ramp_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A stand-in generator that depends on the input, the mask, the position (asymmetrically
    in rows and columns) and the channel, and leaves [0, 1] in places, so that a wrong
    transpose, rotation, clip or rounding anywhere changes the result."""
    _, height, width, _ = masked.shape
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    cols = np.arange(width, dtype=np.float32)[None, :] / width
    ramp = (0.35 * rows - 0.25 * cols)[None, :, :, None]
    channel = np.array([0.013, 0.1, -0.1], np.float32)
    return 0.8 * masked + ramp + 0.2 * mask + channel


# The generator's input sizes: multiples of 8, and at least 16 (its refinement encoder halves
# the input four times); deepgin_jax.export states the same rule.
GENERATOR_SIZE_MULTIPLE, GENERATOR_MIN_SIZE = 8, 16


class RecordingNetwork:
    """Wraps a stand-in network, records the batch shapes it was called with and the inputs,
    and refuses inputs the real generator could not take (wrong dtype or size)."""

    def __init__(self, network=ramp_network):
        self.network = network
        self.calls: list[tuple[int, ...]] = []
        self.inputs: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
        assert masked.dtype == np.float32 and mask.dtype == np.float32
        assert masked.shape[:3] == mask.shape[:3] and mask.shape[-1] == 1
        for side in masked.shape[1:3]:
            assert side >= GENERATOR_MIN_SIZE and side % GENERATOR_SIZE_MULTIPLE == 0, (
                f"the generator cannot take a {masked.shape[1]}x{masked.shape[2]} input"
            )
        self.calls.append(masked.shape[:3])
        self.inputs.append((masked.copy(), mask.copy()))
        return self.network(masked, mask)


@functools.cache
def tiny_shipped() -> Path:
    """`tiny_checkpoint()` written as a shipped-model folder (float16), once per process."""
    from deepgin_jax import shipped

    root = Path(tempfile.mkdtemp(prefix="deepgin-shipped-"))
    atexit.register(shutil.rmtree, root, True)
    shipped.write_shipped_weights(
        tiny_checkpoint(), root / "tiny", card={"name": "DeepGIN-tiny", "note": "test weights"}
    )
    return root / "tiny"


def write_lpips_file(path) -> None:
    """A VGG-topology LPIPS of reduced widths with random weights, in the converter's format."""
    model = lpips.LPIPS("vgg", SMALL_VGG_WIDTHS)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), image, image)
    rng = np.random.default_rng(0)

    def draw(leaf):
        if leaf.shape[:2] == (1, 1) and leaf.shape[-1] == 1:  # linear heads are non-negative
            return np.abs(0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1])) if len(leaf.shape) == 4 else 0.05
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree.map(draw, abstract["params"])
    meta = {"network": lpips.NETWORK_NAME, "net": "vgg", "widths": list(SMALL_VGG_WIDTHS)}
    save_weights(path, params, meta)
