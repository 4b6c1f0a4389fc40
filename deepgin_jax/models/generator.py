"""The DeepGIN generator: coarse stage G1, refinement stage G2 and back projection (spec 1-3).

`DeepGIN.apply(variables, masked_image, mask)` takes the masked image [N, H, W, 3] in [0, 1]
with white holes and the mask [N, H, W, 1] (1 = hole), H and W multiples of 8, and returns a
`DeepGINOutput`. The ablation switches reproduce the rows of the paper's Table 1.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from deepgin_jax.models.attention import unscaled_attention, validate_implementation
from deepgin_jax.models.layers import (
    EdgePaddedConv,
    edge_padded_conv_padding,
    resize_bilinear_align_corners,
    scaled_kaiming_init,
    upsample2x,
)

Array = jax.Array
Dtype = Any

COARSE_RATES = (2, 3, 4, 5, 6, 8, 10, 1)  # spec 1.1, in the reference's concatenation order
REFINE_RATES = (2, 3, 4, 5)
BLOCK_TYPES = ("spd", "dilated", "standard")
ATTENTION_MODES = ("multiscale", "single", "none")
# "residual": Kaiming-normal everywhere, times `init_scale` only on the convolutions that close
# a residual branch (ESRGAN's "smaller initialization", which the paper cites); trains from
# scratch. "reference": every convolution times `init_scale` (spec 5.6); with 0.1 each layer
# shrinks its signal tenfold, so at step 0 most kernel gradients sit below Adam's eps and the
# first updates leave the ReLU branches dead or constant (README, "Training").
INIT_SCHEMES = ("residual", "reference")


def leaky_relu(x: Array) -> Array:
    return nn.leaky_relu(x, negative_slope=0.2)


@flax.struct.dataclass
class DeepGINOutput:
    """The generator's outputs (spec 2.6), all float32 NHWC.

    completed: [N, H, W, 3] reconstructed inside the hole, the known image outside it.
    reconstructed: [N, H, W, 3] the refined prediction before the final composite (I_out).
    coarse: [N, H, W, 3] the raw output of the coarse stage (I_coarse).
    lowres: [N, H/4, W/4, 3] the low-resolution prediction of the back-projection branch
        (I_lr), or None when the model has no back projection.
    """

    completed: Array
    reconstructed: Array
    coarse: Array
    lowres: Array | None


@dataclasses.dataclass(frozen=True)
class ConvSettings:
    """How the generator's convolutions are built and run, not what they compute.

    dtype: the activations' dtype (parameters stay float32).
    crop_padding: see `layers.edge_padded_conv_padding` (the same values; off for ONNX).
    init_scheme: one of `INIT_SCHEMES`: which kernels start as Kaiming-normal (fan_in, gain
        sqrt(2)) times `init_scale`, those closing a residual branch ("residual") or all
        ("reference", spec 5.6 with 0.1). The others start as plain Kaiming-normal; biases
        start at zero.
    """

    dtype: Dtype = jnp.float32
    crop_padding: bool = True
    init_scale: float = 0.1
    init_scheme: str = "residual"

    def conv(
        self,
        features: int,
        kernel: int,
        *,
        pad: int,
        name: str,
        stride: int = 1,
        dilation: int = 1,
        closes_residual: bool = False,
    ) -> EdgePaddedConv:
        """A kernel x kernel convolution after `pad` pixels of replication padding.

        closes_residual: its output is added to a residual stream (x + conv(...)).
        """
        edge_padding, padding = edge_padded_conv_padding(pad, self.crop_padding)
        scaled = self.init_scheme == "reference" or closes_residual
        return EdgePaddedConv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            kernel_dilation=(dilation, dilation),
            edge_padding=edge_padding,
            padding=padding,
            dtype=self.dtype,
            kernel_init=scaled_kaiming_init(self.init_scale if scaled else 1.0),
            bias_init=nn.initializers.zeros,
            name=name,
        )


class ResidualBlock(nn.Module):
    """A residual block of the bottlenecks: x + F(x), with no scaling and no final activation.

    block_type "spd": the Spatial Pyramid Dilation block (spec 1.1): one 3x3 branch per dilation
        rate, each C -> C/K with ReLU, concatenated in `rates` order, then a 3x3 fusion conv.
    block_type "dilated" / "standard": the paper's Fig. 3(a)/(b) baselines, conv-ReLU-conv with
        the first conv dilated by 2 (or not); they have exactly the SPD block's parameter count.
    """

    features: int
    rates: Sequence[int]
    block_type: str = "spd"
    settings: ConvSettings = ConvSettings()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def block_conv(
            features: int, rate: int, name: str, closes_residual: bool = False
        ) -> EdgePaddedConv:
            return self.settings.conv(
                features, 3, pad=rate, dilation=rate, name=name, closes_residual=closes_residual
            )

        if self.block_type == "spd":
            width = self.features // len(self.rates)
            branches = [
                nn.relu(block_conv(width, r, f"branch{i}")(x))
                for i, r in enumerate(self.rates, start=1)
            ]
            y = jnp.concatenate(branches, axis=-1)
        else:
            rate = 2 if self.block_type == "dilated" else 1
            y = nn.relu(block_conv(self.features, rate, "conv1")(x))
        return x + block_conv(self.features, 1, "fusion", closes_residual=True)(y)


def residual_block(
    features: int, rates: Sequence[int], block_type: str, settings: ConvSettings, remat: bool
) -> functools.partial:
    """A `ResidualBlock` constructor (call it with `name=`), rematerialised when `remat`: its
    activations are recomputed in the backward pass instead of stored."""
    cls = nn.remat(ResidualBlock) if remat else ResidualBlock
    return functools.partial(cls, features, rates, block_type, settings=settings)


class SelfAttention(nn.Module):
    """The non-local (embedded Gaussian) self-attention block of spec 2.5.

    theta, phi, g: 1x1 convs C -> C/2; softmax(theta phi^T) over the keys with no 1/sqrt(d)
    scale; a 1x1 output conv C/2 -> C; residual add with no learnable gamma. `implementation`:
    see `attention.unscaled_attention`.
    """

    features: int
    settings: ConvSettings = ConvSettings()
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, h, w, c = x.shape
        inner = self.features // 2

        def project(name: str, features: int, y: Array) -> Array:
            conv = self.settings.conv(features, 1, pad=0, name=name, closes_residual=name == "out")
            return conv(y)

        def tokens(name: str) -> Array:  # [N, H, W, C] -> [N, H*W, C/2], row-major (h, w)
            return project(name, inner, x).reshape(n, h * w, inner)

        attended = unscaled_attention(
            tokens("theta"), tokens("phi"), tokens("g"), self.implementation
        )
        return x + project("out", c, attended.reshape(n, h, w, inner))


class CoarseGenerator(nn.Module):
    """G1 (spec 1): an encoder-decoder at 1/8 resolution with SPD blocks of eight rates."""

    base_features: int = 64
    num_blocks: int = 6
    rates: Sequence[int] = COARSE_RATES
    block_type: str = "spd"
    settings: ConvSettings = ConvSettings()
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f = self.base_features
        conv_ = self.settings.conv
        x = leaky_relu(conv_(f // 2, 7, pad=3, name="enc_conv1")(x))
        x = leaky_relu(conv_(f, 4, stride=2, pad=1, name="enc_conv2")(x))
        x = leaky_relu(conv_(2 * f, 4, stride=2, pad=1, name="enc_conv3")(x))
        x = leaky_relu(conv_(4 * f, 4, stride=2, pad=1, name="enc_conv4")(x))
        for i in range(1, self.num_blocks + 1):
            block = residual_block(4 * f, self.rates, self.block_type, self.settings, self.remat)
            x = block(name=f"block{i}")(x)
        x = leaky_relu(conv_(2 * f, 3, pad=1, name="dec_conv1")(upsample2x(x)))
        x = leaky_relu(conv_(f, 3, pad=1, name="dec_conv2")(upsample2x(x)))
        x = leaky_relu(conv_(f // 2, 3, pad=1, name="dec_conv3")(upsample2x(x)))
        return conv_(3, 7, pad=3, name="out_conv")(x)


class RefinementGenerator(nn.Module):
    """G2 (spec 2.1-2.4): encoder to 1/16, SPD blocks of four rates with self-attention in the
    middle, skip paths with self-attention at 1/8 and 1/4 (the multi-scale self-attention),
    and a decoder with the low-resolution head and the alpha map of the back projection.

    Returns (raw output d5 [N,H,W,3], alpha [N,H,W,1] or None, lowres [N,H/4,W/4,3] or None).
    """

    base_features: int = 64
    num_blocks: int = 6
    rates: Sequence[int] = REFINE_RATES
    block_type: str = "spd"
    attention: str = "multiscale"
    back_projection: bool = True
    settings: ConvSettings = ConvSettings()
    attention_impl: str | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, y: Array) -> tuple[Array, Array | None, Array | None]:
        f = self.base_features
        conv_ = self.settings.conv
        multiscale = self.attention == "multiscale"

        def attention(features: int, name: str) -> SelfAttention:
            return SelfAttention(
                features, self.settings, implementation=self.attention_impl, name=name
            )

        e1 = leaky_relu(conv_(f // 2, 7, pad=3, name="enc_conv1")(y))
        e2 = leaky_relu(conv_(f, 4, stride=2, pad=1, name="enc_conv2")(e1))
        e3 = leaky_relu(conv_(2 * f, 4, stride=2, pad=1, name="enc_conv3")(e2))
        e4 = leaky_relu(conv_(4 * f, 4, stride=2, pad=1, name="enc_conv4")(e3))
        x = leaky_relu(conv_(8 * f, 4, stride=2, pad=1, name="enc_conv5")(e4))

        first_half = self.num_blocks // 2
        for i in range(1, self.num_blocks + 1):
            block = residual_block(8 * f, self.rates, self.block_type, self.settings, self.remat)
            x = block(name=f"bottleneck{i}")(x)
            if i == first_half and self.attention != "none":
                x = attention(8 * f, "attention_1_16")(x)

        # The 1/16 map is resized to the 1/8 skip's size: exactly x2 when H is a multiple of 16,
        # and still aligned when H is an odd multiple of 8.
        x = resize_bilinear_align_corners(x, e4.shape[1:3])
        x = leaky_relu(conv_(4 * f, 3, pad=1, name="dec_conv_1_8")(x))
        if multiscale:
            skip = leaky_relu(conv_(2 * f, 3, pad=1, name="skip_conv_1_8")(e4))
            x = jnp.concatenate([x, attention(2 * f, "attention_1_8")(skip)], axis=-1)
            x = leaky_relu(conv_(4 * f, 3, pad=1, name="mix_conv_1_8")(x))

        x = leaky_relu(conv_(2 * f, 3, pad=1, name="dec_conv_1_4")(upsample2x(x)))
        if multiscale:
            skip = leaky_relu(conv_(f, 3, pad=1, name="skip_conv_1_4")(e3))
            x = jnp.concatenate([x, attention(f, "attention_1_4")(skip)], axis=-1)
            x = leaky_relu(conv_(2 * f, 3, pad=1, name="mix_conv_1_4")(x))

        lowres = None
        if self.back_projection:
            lr = leaky_relu(conv_(f // 2, 3, pad=1, name="lowres_conv")(x))
            lowres = conv_(3, 3, pad=1, name="lowres_out")(lr)

        x = leaky_relu(conv_(f, 3, pad=1, name="dec_conv_1_2")(upsample2x(x)))
        x = leaky_relu(conv_(f // 2, 3, pad=1, name="dec_conv_1_1")(upsample2x(x)))
        raw = conv_(3, 7, pad=3, name="out_conv")(x)
        alpha = None
        if self.back_projection:
            alpha = nn.sigmoid(conv_(1, 3, pad=1, name="alpha_conv")(x))
        return raw, alpha, lowres


def composite(prediction: Array, known: Array, mask: Array) -> Array:
    """prediction inside the hole, `known` outside it: P*M + R*(1-M)."""
    return prediction * mask + known * (1.0 - mask)


def back_project(raw: Array, alpha: Array, lowres: Array, known: Array, mask: Array) -> Array:
    """The back-projection branch (spec 2.6 steps 1-5); returns reconst_img (I_out).

    The composited raw output is sampled down to the low-resolution grid (align-corners
    bilinear, no anti-aliasing), its difference to the low-resolution prediction is sampled
    back up and added, gated per pixel by the learned alpha map.
    """
    composed = composite(raw, known, mask)
    residual = lowres - resize_bilinear_align_corners(composed, lowres.shape[1:3])
    return composed + resize_bilinear_align_corners(residual, raw.shape[1:3]) * alpha


class DeepGIN(nn.Module):
    """DeepGIN: G1, then G2 on the re-composited coarse image, then back projection.

    Ablations (paper Table 1): `block_type` spd|dilated|standard, `attention`
    multiscale|single|none, `back_projection`, and `coarse_only` (G1 alone).

    Execution only (the same parameters and values): `dtype` of the activations, the
    self-attention `attention_impl`, `remat` of the residual blocks, and `crop_padding` (see
    `layers.edge_padded_conv_padding`; off for ONNX). `init_scheme` and `init_scale` set the
    initial weights (`ConvSettings`, `INIT_SCHEMES`).
    """

    base_features: int = 64
    num_coarse_blocks: int = 6
    num_refine_blocks: int = 6
    coarse_rates: Sequence[int] = COARSE_RATES
    refine_rates: Sequence[int] = REFINE_RATES
    block_type: str = "spd"
    attention: str = "multiscale"
    back_projection: bool = True
    coarse_only: bool = False
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    remat: bool = False
    crop_padding: bool = True
    init_scale: float = 0.1
    init_scheme: str = "residual"

    def setup(self) -> None:
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {self.block_type!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"init_scheme must be one of {INIT_SCHEMES}, got {self.init_scheme!r}")
        validate_implementation(self.attention_impl)
        settings = ConvSettings(self.dtype, self.crop_padding, self.init_scale, self.init_scheme)
        self.coarse = CoarseGenerator(
            self.base_features,
            self.num_coarse_blocks,
            self.coarse_rates,
            self.block_type,
            settings=settings,
            remat=self.remat,
        )
        if not self.coarse_only:
            self.refine = RefinementGenerator(
                self.base_features,
                self.num_refine_blocks,
                self.refine_rates,
                self.block_type,
                self.attention,
                self.back_projection,
                settings=settings,
                attention_impl=self.attention_impl,
                remat=self.remat,
            )

    def __call__(
        self, masked_image: Array, mask: Array, known_image: Array | None = None
    ) -> DeepGINOutput:
        """masked_image: [N, H, W, 3] in [0, 1], holes white; mask: [N, H, W, 1], 1 = hole.

        known_image: the image whose pixels outside the hole are composited back (the
        reference's `real_img`); defaults to `masked_image`, which is the same for binary masks.
        """
        n, h, w, _ = masked_image.shape
        if h % 8 or w % 8:
            raise ValueError(f"height and width must be multiples of 8, got {h}x{w}; pad first")
        if mask.shape != (n, h, w, 1):
            raise ValueError(f"mask must have shape {(n, h, w, 1)}, got {mask.shape}")
        masked_image = masked_image.astype(jnp.float32)
        mask = mask.astype(jnp.float32)
        known = masked_image if known_image is None else known_image.astype(jnp.float32)

        def stage_input(image: Array) -> Array:
            return jnp.concatenate([image, mask], axis=-1).astype(self.dtype)

        coarse = self.coarse(stage_input(masked_image)).astype(jnp.float32)
        coarse_composite = composite(coarse, known, mask)
        if self.coarse_only:
            return DeepGINOutput(coarse_composite, coarse, coarse, None)

        raw, alpha, lowres = self.refine(stage_input(coarse_composite))
        raw = raw.astype(jnp.float32)
        if self.back_projection:
            lowres = lowres.astype(jnp.float32)
            reconstructed = back_project(raw, alpha.astype(jnp.float32), lowres, known, mask)
        else:
            reconstructed = raw
        return DeepGINOutput(composite(reconstructed, known, mask), reconstructed, coarse, lowres)
