"""Building blocks shared by the DeepGIN networks (spec sections 1.1, 2.5, 4 and 12).

Everything is NHWC. Convolutions in the generator use replication ("edge") padding followed by
a VALID convolution, exactly as the reference's `ReplicationPad2d` + `Conv2d(padding=0)`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any


def scaled_kaiming_init(scale: float) -> nn.initializers.Initializer:
    """Kaiming-normal (fan_in, gain sqrt(2)) times `scale`: std = scale * sqrt(2 / fan_in).

    scale 0.1 is the reference's generator initialiser (spec 5.6).
    """
    return nn.initializers.variance_scaling(2.0 * scale**2, "fan_in", "normal")


# PyTorch's default Conv2d initialiser, kept by the discriminator (spec 5.6):
# kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), i.e. variance 1 / (3 fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv bias initialiser: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def edge_pad(x: Array, pad: int) -> Array:
    """Replication padding of `pad` pixels on every side of the spatial axes of [N, H, W, C].

    Written as slices and one concatenation per axis rather than `jnp.pad(mode="edge")`, which
    emits seven operations per axis (including empty pieces for the unpadded ones): the same
    values, a quarter of the graph for the exporters.
    """
    if pad == 0:
        return x

    def pad_axis(y: Array, axis: int) -> Array:
        first = jax.lax.slice_in_dim(y, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(y, y.shape[axis] - 1, y.shape[axis], axis=axis)
        return jnp.concatenate([first] * pad + [y] + [last] * pad, axis=axis)

    return pad_axis(pad_axis(x, 1), 2)


CROP_ONE = ((-1, -1), (-1, -1))
_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain_conv(x: Array, kernel: Array, precision: Any) -> Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), CROP_ONE, dimension_numbers=_NHWC, precision=precision
    )


def _row_split_conv_values(x: Array, kernel: Array, precision: Any) -> Array:
    """`_plain_conv` as a kh x 1 convolution to kw * out channels, one group of `out` per
    kernel column, and a sum of the groups shifted by their column."""
    kh, kw, cin, cout = kernel.shape
    columns = kernel.transpose(0, 2, 1, 3).reshape(kh, 1, cin, kw * cout)
    partial = _plain_conv(x, columns, precision)  # [N, H', W' + kw - 1, kw * out]
    partial = partial.reshape(*partial.shape[:3], kw, cout)
    width = partial.shape[2] - kw + 1
    out = partial[:, :, 0:width, 0]
    for j in range(1, kw):
        out = out + partial[:, :, j : j + width, j]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _row_split_conv(x: Array, kernel: Array, precision: Any) -> Array:
    return _row_split_conv_values(x, kernel, precision)


def _row_split_conv_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple]:
    return _row_split_conv_values(x, kernel, precision), (x, kernel)


def _row_split_conv_bwd(precision: Any, residuals: tuple, grad: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # [kh, kw, out, in]
    if not splits_rows(flipped.shape):
        return jax.vjp(lambda a, b: _plain_conv(a, b, precision), x, kernel)[1](grad)
    # The input's gradient is the full correlation of `grad` with the flipped kernel, zero on
    # the cropped border: itself a wide convolution between few channels, so split by rows too.
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(grad, ((0, 0), (kh, kh), (kw, kw), (0, 0)))  # kh - 1, and 1 cropped
    x_grad = jnp.pad(
        _row_split_conv_values(padded, flipped, precision), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    kernel_grad = jax.vjp(lambda b: _plain_conv(x, b, precision), kernel)[1](grad)[0]
    return x_grad, kernel_grad


_row_split_conv.defvjp(_row_split_conv_fwd, _row_split_conv_bwd)


def splits_rows(kernel_shape: Sequence[int]) -> bool:
    """Whether `conv_general_dilated` runs a cropping stride-1 convolution of this kernel
    [kh, kw, in, out] as `_row_split_conv`: wide kernels between few channels (DeepGIN-compact's
    7x7 convolutions at full size, 4 -> 8 and 8 -> 3), which XLA:CPU runs as plain loops at
    under 10 GFLOP/s, 2 to 5 times slower than the split form. With more channels (the
    full-size model's 4 -> 32 and 32 -> 3) the plain convolution is the faster one."""
    _, kw, cin, cout = kernel_shape
    return kw >= 5 and kw * cout <= 64 and cin <= 16


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> Array:
    """`jax.lax.conv_general_dilated`, except that a float32 stride-1 NHWC convolution
    cropping one pixel (`edge_padded_conv_padding(crop=True)`) of a kernel that `splits_rows`
    computes its values as `_row_split_conv` (the same sums in another order) and its
    gradients as the plain convolution's (the same program)."""
    plain = functools.partial(
        jax.lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )
    if (
        kwargs
        or lhs.dtype != jnp.float32  # a narrower type would round each shifted partial sum
        or lhs.ndim != 4
        or tuple(window_strides) != (1, 1)
        or tuple(lhs_dilation or (1, 1)) != (1, 1)
        or tuple(rhs_dilation or (1, 1)) != (1, 1)
        or feature_group_count != 1
        or not isinstance(padding, Sequence)
        or tuple(map(tuple, padding)) != CROP_ONE
        or dimension_numbers != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
        or not splits_rows(rhs.shape)
    ):
        return plain()
    return _row_split_conv(lhs, rhs, precision)


class EdgePaddedConv(nn.Conv):
    """`nn.Conv` preceded by replication padding (`ReplicationPad2d(p)` + `Conv2d(padding=0)`).

    The parameters are the usual `kernel` [kh, kw, in, out] and `bias` [out], so the tree
    matches a plain `nn.Conv` and the PyTorch weights map onto it with one transpose. The
    convolution is `conv_general_dilated` (below), the same values.
    """

    edge_padding: int = 0
    padding: Any = "VALID"
    conv_general_dilated: Any = conv_general_dilated

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        return super().__call__(edge_pad(inputs, self.edge_padding))


def edge_padded_conv_padding(pad: int, crop: bool) -> tuple[int, Any]:
    """(edge_padding, padding) of an `EdgePaddedConv` that replicates `pad` border pixels.

    crop=False: pad by `pad`, then a VALID convolution (the reference's layout).
    crop=True: pad one pixel more and let the convolution crop it (padding -1): the same
    values, but XLA:CPU (YNNPACK, jaxlib 0.10) runs a convolution without padding up to 25x
    slower than a padded one, and a negative padding is a slice on every backend. ONNX forbids
    negative pads, so the ONNX exporter builds the model with crop=False.
    """
    if pad == 0 or not crop:
        return pad, "VALID"
    return pad + 1, ((-1, -1), (-1, -1))


def _align_corners_taps(in_size: Any, out_size: Any) -> tuple[Any, Any, Any]:
    """(lo, hi, frac) of output positions 0..out_size-1 sampling i * (in - 1) / (out - 1).

    Concrete sizes give NumPy constants computed in float64 (XLA folds them); symbolic sizes
    (a `jax.export` with a symbolic height or width) give the same arithmetic traced in float32.
    """
    if isinstance(in_size, int) and isinstance(out_size, int):
        if out_size == 1 or in_size == 1:
            src = np.zeros(out_size, dtype=np.float64)
        else:
            src = np.arange(out_size, dtype=np.float64) * ((in_size - 1) / (out_size - 1))
        lo = np.clip(np.floor(src).astype(np.int32), 0, in_size - 1)
        return lo, np.minimum(lo + 1, in_size - 1), src - lo
    last_in = jnp.asarray(in_size, jnp.float32) - 1
    src = jax.lax.iota(jnp.float32, out_size) * (
        last_in / jnp.maximum(jnp.asarray(out_size, jnp.float32) - 1, 1)
    )
    lo = jnp.clip(jnp.floor(src), 0, last_in).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, last_in.astype(jnp.int32))
    return lo, hi, src - lo


def _along(values: Any, axis: int, ndim: int, dtype: Any) -> Array:
    """A 1-D table as an array that broadcasts along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = -1
    return jnp.reshape(values, shape).astype(dtype)


def _interpolate(x: Array, axis: int, lo: Any, hi: Any, frac: Any) -> Array:
    frac = _along(frac, axis, x.ndim, x.dtype)
    x_lo = jnp.take(x, lo, axis=axis, mode="clip")
    x_hi = jnp.take(x, hi, axis=axis, mode="clip")
    return x_lo + (x_hi - x_lo) * frac


def _gathered_transpose(
    lo: np.ndarray, hi: np.ndarray, frac: np.ndarray, in_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The interpolation's transpose as gathers: (sources [K, in], weights [K, in]) such that
    the gradient of input i is sum_k weights[k, i] * grad[sources[k, i]] (unused slots weigh 0)."""
    terms: list[list[tuple[int, float]]] = [[] for _ in range(in_size)]
    for out, (low, high, f) in enumerate(zip(lo, hi, frac, strict=True)):
        terms[low].append((out, 1.0 - f))
        terms[high].append((out, f))
    depth = max(len(t) for t in terms)
    sources = np.zeros((depth, in_size), np.int32)
    weights = np.zeros((depth, in_size), np.float64)
    for i, contributions in enumerate(terms):
        for k, (out, weight) in enumerate(contributions):
            sources[k, i], weights[k, i] = out, weight
    return sources, weights


# The most gathers the resize's gradient takes (an input pixel feeds about twice the scale
# factor's outputs: 5 for DeepGIN's x2 upsampling, 9 for its x4 back-projection).
MAX_GRADIENT_GATHERS = 16


@functools.cache
def _static_resampler(in_size: int, out_size: int, axis: int) -> Any:
    """The interpolation along `axis` between static sizes, its gradient computed by gathers:
    XLA:CPU runs autodiff's scatter-add of `jnp.take`'s gradient through transposed copies
    that took 10 ms for one [6, 128, 128, 16] upsampling in DeepGIN-compact's warm-up step."""
    lo, hi, frac = _align_corners_taps(in_size, out_size)
    sources, weights = _gathered_transpose(lo, hi, frac, in_size)
    if len(sources) > MAX_GRADIENT_GATHERS:  # a large enlargement: one gather per output pixel
        return functools.partial(_interpolate, axis=axis, lo=lo, hi=hi, frac=frac)

    @jax.custom_vjp
    def resample(x: Array) -> Array:
        return _interpolate(x, axis, lo, hi, frac)

    def forward(x: Array) -> tuple[Array, None]:
        return resample(x), None

    def backward(_: None, grad: Array) -> tuple[Array]:
        total = jnp.take(grad, sources[0], axis=axis) * _along(
            weights[0], axis, grad.ndim, grad.dtype
        )
        for k in range(1, len(sources)):
            part = jnp.take(grad, sources[k], axis=axis)
            total = total + part * _along(weights[k], axis, grad.ndim, grad.dtype)
        return (total,)

    resample.defvjp(forward, backward)
    return resample


def _align_corners_axis(x: Array, axis: int, out_size: Any) -> Array:
    in_size = x.shape[axis]
    if in_size is out_size or (isinstance(in_size, int) and in_size == out_size):
        return x
    if isinstance(in_size, int) and isinstance(out_size, int):
        return _static_resampler(in_size, out_size, axis % x.ndim)(x)
    return _interpolate(x, axis, *_align_corners_taps(in_size, out_size))


def resize_bilinear_align_corners(x: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of [N, H, W, C] with align_corners=True (spec 12).

    Output pixel i samples input coordinate i * (in - 1) / (out - 1), with no anti-aliasing:
    the semantics of PyTorch's `nn.UpsamplingBilinear2d` for both up- and down-sampling.
    `jax.image.resize` uses half-pixel centres and anti-aliases, so it does not match.
    """
    out_h, out_w = size
    return _align_corners_axis(_align_corners_axis(x, 1, out_h), 2, out_w)


def upsample2x(x: Array) -> Array:
    """`nn.UpsamplingBilinear2d(scale_factor=2)` on [N, H, W, C]."""
    return resize_bilinear_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))


def avg_pool_exclude_pad(x: Array) -> Array:
    """`AvgPool2d(3, stride=2, padding=1, count_include_pad=False)` on [N, H, W, C] (spec 4)."""
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_2x2(x: Array) -> Array:
    """2x2 max pooling with stride 2 of [N, H, W, C] (odd trailing rows or columns dropped, as
    `nn.max_pool(x, (2, 2), strides=(2, 2))`), with its gradient.

    The same values and gradients as `nn.max_pool`, ties included (the gradient goes to the
    first maximum of a window in row-major order), but written as a reshape and a reduction:
    XLA:CPU lowers `nn.max_pool`'s gradient to a select-and-scatter, several times slower than
    these elementwise operations.
    """
    h, w = x.shape[1:3]
    if h % 2 or w % 2:
        x = x[:, : h - h % 2, : w - w % 2]
    return _max_pool_2x2(x)


# Each element's place in its 2x2 window, in row-major order: [1, 1, 2, 1, 2, 1].
_WINDOW_ORDER = np.arange(4, dtype=np.int32).reshape(1, 1, 2, 1, 2, 1)


def _windows(x: Array) -> Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _max_pool_2x2(x: Array) -> Array:
    return jnp.max(_windows(x), axis=(2, 4))


def _max_pool_2x2_fwd(x: Array) -> tuple[Array, tuple[Array, Array]]:
    pooled = _max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_2x2_bwd(residuals: tuple[Array, Array], grad: Array) -> tuple[Array]:
    x, pooled = residuals
    windows = _windows(x)
    is_max = windows == pooled[:, :, None, :, None]
    first = jnp.min(jnp.where(is_max, _WINDOW_ORDER, 4), axis=(2, 4), keepdims=True)
    spread = jnp.where(first == _WINDOW_ORDER, grad[:, :, None, :, None], 0).astype(grad.dtype)
    return (spread.reshape(x.shape),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
