"""The conditional multi-scale PatchGAN discriminator with spectral norm (spec 4)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgin_jax.models.layers import (
    avg_pool_exclude_pad,
    torch_default_bias_init,
    torch_default_kernel_init,
)

Array = jax.Array
Dtype = Any

SPECTRAL_COLLECTION = "spectral"


class SpectralNormConv(nn.Module):
    """A 4x4 convolution whose kernel is divided by its largest singular value (spec 4).

    One power iteration per call from the persistent vector `u` [out] (collection
    "spectral", not trained): v = normalize(W^T u), u' = normalize(W v), sigma = u'^T W v,
    with W the kernel as an [out, kh*kw*in] matrix; the gradient flows through sigma into W
    but not into u or v. `update_stats=False` uses the same iteration without storing u'.

    Written out rather than wrapping `nn.SpectralNorm`, whose `init` stores the already
    normalised kernel as the parameter: the reference keeps PyTorch's default initialisation
    for the raw weight (spec 5.6).
    """

    features: int
    strides: int
    padding: int = 2
    eps: float = 1e-12
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, update_stats: bool) -> Array:
        fan_in = x.shape[-1] * 16
        kernel = self.param("kernel", torch_default_kernel_init, (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", torch_default_bias_init(fan_in), (self.features,))
        u_var = self.variable(
            SPECTRAL_COLLECTION,
            "u",
            lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (self.features,))),
        )
        matrix = kernel.reshape(-1, self.features).T  # [out, kh*kw*in]
        u = jax.lax.stop_gradient(u_var.value)
        v = jax.lax.stop_gradient(_l2_normalize(matrix.T @ u, self.eps))
        u = jax.lax.stop_gradient(_l2_normalize(matrix @ v, self.eps))
        sigma = u @ matrix @ v
        if update_stats and not self.is_initializing():
            u_var.value = u
        # The same zero padding, split: all but one pixel padded beforehand. XLA:CPU (jaxlib
        # 0.10) computes the kernel gradient of a convolution padded by more than (k - 1) / 2
        # with a naive loop, up to 80x slower; other backends fold the pad back in.
        outer = max(self.padding - 1, 0)
        inner = self.padding - outer
        y = jax.lax.conv_general_dilated(
            jnp.pad(x.astype(self.dtype), ((0, 0), (outer, outer), (outer, outer), (0, 0))),
            (kernel / sigma).astype(self.dtype),
            window_strides=(self.strides, self.strides),
            padding=((inner, inner), (inner, inner)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    return x / (jnp.linalg.norm(x) + eps)


class PatchDiscriminator(nn.Module):
    """One scale: 4x4 spectral-norm convs with zero padding 2, strides 2, .., 2, 1, 1.

    With `num_layers=2` and 64 features: 64 (s2), 128 (s2), 256 (s1), 256 (s1), LeakyReLU 0.2
    after all but the last; the output has 256 channels (67x67 for a 256x256 input).
    """

    features: int = 64
    num_layers: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, update_stats: bool) -> Array:
        widths = [self.features]
        for _ in range(1, self.num_layers):
            widths.append(min(widths[-1] * 2, 512))
        widths.append(min(widths[-1] * 2, 512))
        strides = [2] * self.num_layers + [1]
        widths.append(widths[-1])
        strides.append(1)
        for i, (width, stride) in enumerate(zip(widths, strides, strict=True)):
            x = SpectralNormConv(width, stride, dtype=self.dtype, name=f"conv{i}")(x, update_stats)
            if i < len(widths) - 1:
                x = nn.leaky_relu(x, negative_slope=0.2)
        return x


class MultiScaleDiscriminator(nn.Module):
    """D1 on the full-resolution pair and D2 on it average-pooled by 2 (spec 4).

    Called as `apply(variables, masked_image, candidate, update_stats=...,
    mutable=["spectral"])`: the input is concat[masked image (holes white), candidate]
    (6 channels); the mask is not an input. Each call with `update_stats=True` advances the
    power iteration of every spectral norm by one step (the u vectors are state, not trained).
    Returns one float32 map [N, h, w, C] per scale, full resolution first.
    """

    features: int = 64
    num_layers: int = 2
    num_scales: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, masked_image: Array, candidate: Array, update_stats: bool = True
    ) -> list[Array]:
        x = jnp.concatenate([masked_image, candidate], axis=-1).astype(jnp.float32)
        outputs = []
        for scale in range(self.num_scales):
            if scale:
                x = avg_pool_exclude_pad(x)
            d = PatchDiscriminator(self.features, self.num_layers, self.dtype, name=f"scale{scale}")
            outputs.append(d(x.astype(self.dtype), update_stats).astype(jnp.float32))
        return outputs
