"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features") in Flax.

d(x0, x1) = sum_l mean_hw( w_l . (f_l(x0) / |f_l(x0)| - f_l(x1) / |f_l(x1)|)^2 ), where f_l are
five ReLU taps of a torchvision ImageNet backbone (VGG-16: relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3; AlexNet: relu1..relu5), |.| is the channel-wise L2 norm (+1e-10) and w_l >= 0 are
the learned 1x1 linear heads. Before the backbone the images go from [0, 1] to [-1, 1] and
through LPIPS's scaling layer, (x - shift) / scale.

Parameter tree: `backbone/conv{i}/{kernel,bias}` (HWIO) and `lin{l}/kernel` [1, 1, C_l, 1].
`widths` (output channels of each backbone conv) default to torchvision's; reduced widths
build the same topology for tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepgin_jax.weights_io import load_weights

Array = jax.Array

NETWORK_NAME = "lpips"
NETS = ("vgg", "alex")
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
ALEXNET_WIDTHS = (64, 192, 384, 256, 256)
DEFAULT_WIDTHS = {"vgg": VGG16_WIDTHS, "alex": ALEXNET_WIDTHS}
# VGG-16: conv indices whose ReLU output is tapped, and after which a 2x2 max pool follows.
_VGG16_TAPS = (1, 3, 6, 9, 12)
_VGG16_POOL_AFTER = (1, 3, 6, 9)
# AlexNet: (kernel, stride, padding) per conv; 3x3 stride-2 max pools follow convs 0 and 1.
_ALEXNET_GEOMETRY = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
_ALEXNET_POOL_AFTER = (0, 1)
# LPIPS's ScalingLayer constants (for inputs in [-1, 1]).
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPSILON = 1e-10
_PRECISION = jax.lax.Precision.HIGHEST


def _conv(features: int, kernel: int, stride: int, padding: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        precision=_PRECISION,
        name=name,
    )


class VGG16Features(nn.Module):
    """torchvision VGG-16 `features` up to relu5_3: the five LPIPS taps, each [N, h, w, C]."""

    widths: tuple[int, ...] = VGG16_WIDTHS

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        if len(self.widths) != len(VGG16_WIDTHS):
            raise ValueError(f"VGG-16 has 13 convolutions, got widths {self.widths}")
        taps = []
        for index, features in enumerate(self.widths):
            x = nn.relu(_conv(features, 3, 1, 1, name=f"conv{index}")(x))
            if index in _VGG16_TAPS:
                taps.append(x)
            if index in _VGG16_POOL_AFTER:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return taps


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features` up to relu5: the five LPIPS taps, each [N, h, w, C]."""

    widths: tuple[int, ...] = ALEXNET_WIDTHS

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        if len(self.widths) != len(ALEXNET_WIDTHS):
            raise ValueError(f"AlexNet has 5 convolutions, got widths {self.widths}")
        taps = []
        for index, (features, (kernel, stride, padding)) in enumerate(
            zip(self.widths, _ALEXNET_GEOMETRY, strict=True)
        ):
            x = nn.relu(_conv(features, kernel, stride, padding, name=f"conv{index}")(x))
            taps.append(x)
            if index in _ALEXNET_POOL_AFTER:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        return taps


def to_signed_range(images: Array) -> Array:
    """uint8 (0..255) or float in [0, 1] -> float32 in [-1, 1]."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    return images.astype(jnp.float32) * 2.0 - 1.0


def unit_normalize(features: Array) -> Array:
    """Divides [N, h, w, C] by its channel-wise L2 norm (+1e-10), as LPIPS's normalize_tensor."""
    norm = jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True))
    return features / (norm + NORMALIZE_EPSILON)


class LPIPS(nn.Module):
    """LPIPS distance between two image batches.

    Args (call): images_a, images_b: [N, H, W, 3] RGB in [0, 1] (float) or uint8.
    Returns: [N] distances (0 for identical images).
    """

    net: str = "vgg"
    widths: tuple[int, ...] | None = None

    def _backbone(self) -> nn.Module:
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        widths = tuple(self.widths or DEFAULT_WIDTHS[self.net])
        if self.net == "vgg":
            return VGG16Features(widths, name="backbone")
        return AlexNetFeatures(widths, name="backbone")

    @nn.compact
    def __call__(self, images_a: Array, images_b: Array) -> Array:
        if images_a.shape != images_b.shape or images_a.ndim != 4 or images_a.shape[-1] != 3:
            raise ValueError(
                f"LPIPS needs two [N, H, W, 3] batches of one shape, got {images_a.shape} "
                f"and {images_b.shape}"
            )
        shift = jnp.asarray(SCALING_SHIFT, jnp.float32)
        scale = jnp.asarray(SCALING_SCALE, jnp.float32)
        both = jnp.concatenate([to_signed_range(images_a), to_signed_range(images_b)], axis=0)
        taps = self._backbone()((both - shift) / scale)
        batch = images_a.shape[0]
        distance = jnp.zeros((batch,), jnp.float32)
        for index, tap in enumerate(taps):
            diff = (unit_normalize(tap[:batch]) - unit_normalize(tap[batch:])) ** 2
            head = nn.Conv(1, (1, 1), use_bias=False, precision=_PRECISION, name=f"lin{index}")
            distance = distance + jnp.mean(head(diff), axis=(1, 2, 3))
        return distance


def load_lpips(path: str | os.PathLike) -> tuple[LPIPS, dict[str, Any], dict[str, Any]]:
    """Reads a file written by `deepgin_jax.convert.convert_lpips`: (module, params, meta)."""
    params, meta = load_weights(path)
    if meta.get("network") != NETWORK_NAME:
        raise ValueError(f"{path} holds {meta.get('network')!r}, not {NETWORK_NAME!r}")
    net = meta.get("net")
    if net not in NETS:
        raise ValueError(f"{path}: meta 'net' must be one of {NETS}, got {net!r}")
    widths = tuple(int(w) for w in meta.get("widths", DEFAULT_WIDTHS[net]))
    return LPIPS(net, widths), params, meta


class LPIPSDistance:
    """Frozen LPIPS with its weights: `distance(images_a, images_b) -> [N]` numpy float32."""

    def __init__(self, model: LPIPS, params: Mapping[str, Any]):
        self.model = model
        self.params = jax.tree.map(jnp.asarray, params)
        self._apply = jax.jit(lambda p, a, b: model.apply({"params": p}, a, b))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LPIPSDistance:
        model, params, _ = load_lpips(path)
        return cls(model, params)

    def __call__(self, images_a: Array | np.ndarray, images_b: Array | np.ndarray) -> np.ndarray:
        return np.asarray(self._apply(self.params, jnp.asarray(images_a), jnp.asarray(images_b)))
