"""The faster formulations against the ones they replace: the same values and gradients.

Each rewrite for speed (README, "Speed on these CPUs") is checked here against the plain
formulation it replaced, on tiny inputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgin_jax import losses
from deepgin_jax.inference import detail as detail_transfer
from deepgin_jax.models import layers, vgg
from deepgin_jax.models.layers import edge_pad, max_pool_2x2

RNG = np.random.default_rng(0)
WIDTHS = (4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8)


def flax_max_pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_max_pool_matches_flax_values_and_gradients_with_ties(shape):
    # Rounded normals: many windows hold their maximum twice or more, and ReLU-like zeros.
    x = jnp.asarray(np.maximum(np.round(RNG.standard_normal(shape)), 0).astype(np.float32))
    pooled = max_pool_2x2(x)
    np.testing.assert_array_equal(pooled, flax_max_pool(x))
    cotangent = jnp.asarray(RNG.standard_normal(pooled.shape).astype(np.float32))
    ours = jax.vjp(max_pool_2x2, x)[1](cotangent)[0]
    theirs = jax.vjp(flax_max_pool, x)[1](cotangent)[0]
    np.testing.assert_array_equal(ours, theirs)
    assert float(jnp.abs(ours).sum()) > 0


def random_vgg(widths=WIDTHS) -> vgg.VGGFeatures:
    params, cin = {}, 3
    for name, width in zip(vgg.VGG19_CONV_NAMES, widths, strict=True):
        kernel = RNG.standard_normal((3, 3, cin, width)) / np.sqrt(9 * cin)
        bias = 0.1 * RNG.standard_normal(width)
        params[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
        cin = width
    return vgg.vgg_features_from_params(params, {"convention": "torchvision"})


def test_stored_backward_kernels_give_the_same_features_and_input_gradients():
    features = random_vgg()
    assert features.backward_kernels is not None  # loading stores them
    plain = features.replace(backward_kernels=None)
    images = jnp.asarray(RNG.random((2, 32, 32, 3)).astype(np.float32))

    def total(extractor, x):
        return sum(jnp.sum(f * jnp.cos(f)) for f in extractor(x))

    for a, b in zip(features(images), plain(images), strict=True):
        np.testing.assert_array_equal(a, b)
    ours = jax.jit(jax.grad(total, argnums=1))(features, images)
    theirs = jax.jit(jax.grad(total, argnums=1))(plain, images)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * float(jnp.abs(theirs).max()))


def grouped_batch(photos: int, masks: int, size: int = 16):
    """Candidates and a target laid out as training batches are: each photo's masks in a row."""
    target = np.repeat(RNG.random((photos, size, size, 3)).astype(np.float32), masks, axis=0)
    candidates = [RNG.random(target.shape).astype(np.float32) for _ in range(2)]
    return [jnp.asarray(c) for c in candidates], jnp.asarray(target)


@pytest.mark.parametrize("weight", [None, (1, 1, 1, 0, 0, 0)])
def test_vgg_losses_once_per_photo_equal_the_losses_on_every_sample(weight):
    features = random_vgg()
    candidates, target = grouped_batch(2, 3)
    weight = None if weight is None else jnp.asarray(weight, jnp.float32)

    def losses_and_gradients(group):
        def total(candidates):
            p, s = losses.vgg_losses(
                features,
                candidates,
                target,
                image_size=32,
                sample_weight=weight,
                target_group=group,
            )
            return p + s, (p, s)

        return jax.jit(jax.value_and_grad(total, has_aux=True))(candidates)

    (_, (p1, s1)), g1 = losses_and_gradients(1)
    (_, (p3, s3)), g3 = losses_and_gradients(3)
    np.testing.assert_allclose(p3, p1, rtol=1e-5)
    np.testing.assert_allclose(s3, s1, rtol=1e-5)
    for a, b in zip(g3, g1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_target_features_of_other_layouts_are_computed_per_sample():
    features = random_vgg()
    calls = []

    def recording(images):
        calls.append(images.shape[0])
        return features(images)

    _, grouped = grouped_batch(2, 3)
    shuffled = grouped[jnp.asarray([0, 3, 1, 4, 2, 5])]  # photos alternate: no runs of 3
    for target in (grouped, shuffled):
        ours = jax.jit(lambda t: losses.target_vgg_features(recording, t, (32, 32), 3))(target)
        theirs = losses.target_vgg_features(features, target, (32, 32), 1)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))
    assert sorted(set(calls)) == [2, 6]  # both branches traced: one image per photo, or all
    # A batch that does not split into runs (padded to a device multiple) takes every sample.
    assert len(losses.target_vgg_features(recording, grouped[:5], (32, 32), 3)[0]) == 5


def test_edge_pad_is_numpy_edge_padding():
    x = RNG.standard_normal((1, 5, 4, 2)).astype(np.float32)
    expected = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    np.testing.assert_array_equal(edge_pad(jnp.asarray(x), 3), expected)


def scattered_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The align-corners resize as `jnp.take` and a lerp, its gradient left to autodiff (a
    scatter-add): the formulation that `layers._static_resampler` replaced."""
    for axis, out_size in ((1, size[0]), (2, size[1])):
        if x.shape[axis] != out_size:
            lo, hi, frac = layers._align_corners_taps(x.shape[axis], out_size)
            x = layers._interpolate(x, axis, lo, hi, frac)
    return x


@pytest.mark.parametrize(
    "shape, size, gathers",
    [
        ((2, 16, 16, 3), (32, 32), True),
        ((1, 7, 9, 2), (5, 20), True),
        ((1, 1, 6, 2), (4, 6), True),
        ((1, 2, 3, 1), (40, 3), False),  # x20 taller: more gathers than the scatter is worth
    ],
)
def test_resize_gradient_by_gathers_is_the_scatter_add(shape, size, gathers):
    x = jnp.asarray(RNG.standard_normal(shape).astype(np.float32))
    ours, ours_vjp = jax.vjp(lambda a: layers.resize_bilinear_align_corners(a, size), x)
    theirs, theirs_vjp = jax.vjp(lambda a: scattered_resize(a, size), x)
    np.testing.assert_array_equal(ours, theirs)
    cotangent = jnp.asarray(RNG.standard_normal(ours.shape).astype(np.float32))
    np.testing.assert_allclose(ours_vjp(cotangent)[0], theirs_vjp(cotangent)[0], atol=1e-6)
    jaxpr = str(jax.make_jaxpr(ours_vjp)(cotangent))
    assert ("scatter" not in jaxpr) == gathers


@pytest.mark.parametrize(
    "kernel_shape, splits",
    [((7, 7, 4, 8), True), ((7, 7, 8, 3), True), ((7, 7, 32, 3), False), ((3, 3, 8, 1), False)],
)
def test_row_split_convolution_matches_the_plain_one_with_its_gradients(kernel_shape, splits):
    """The cropping stride-1 convolutions that `splits_rows` picks run as a kh x 1
    convolution and shifted sums: the plain convolution's values and input gradient (itself
    split by rows) to float32 rounding, and exactly its kernel gradient."""
    x = jnp.asarray(RNG.standard_normal((2, 19, 23, kernel_shape[2])).astype(np.float32))
    kernel = jnp.asarray(RNG.standard_normal(kernel_shape).astype(np.float32))
    pad = layers.CROP_ONE

    def ours(x, kernel):
        dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
        return layers.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=dims)

    def theirs(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    assert layers.splits_rows(kernel_shape) == splits
    assert ("custom_vjp" in str(jax.make_jaxpr(ours)(x, kernel))) == splits
    got, expected = jax.jit(ours)(x, kernel), jax.jit(theirs)(x, kernel)
    assert (
        got.shape
        == expected.shape
        == (2, 19 - 1 - kernel_shape[0], 23 - 1 - kernel_shape[1], kernel_shape[3])
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(jnp.abs(expected).max()))
    cotangent = jnp.asarray(RNG.standard_normal(expected.shape).astype(np.float32))
    grads = [
        jax.jit(lambda a, b, f=f: jax.vjp(f, a, b)[1](cotangent))(x, kernel) for f in (ours, theirs)
    ]
    (x_grad, kernel_grad), (plain_x_grad, plain_kernel_grad) = grads
    np.testing.assert_array_equal(kernel_grad, plain_kernel_grad)
    scale = float(jnp.abs(plain_x_grad).max())
    np.testing.assert_allclose(x_grad, plain_x_grad, rtol=0, atol=1e-5 * scale)
    assert float(jnp.abs(x_grad[:, 0]).max()) == float(jnp.abs(x_grad[:, :, -1]).max()) == 0


def test_edge_padded_conv_uses_the_row_split_only_where_it_crops():
    x = jnp.asarray(RNG.standard_normal((1, 16, 16, 4)).astype(np.float32))
    for padding, split in ((layers.CROP_ONE, True), ("VALID", False)):
        conv = layers.EdgePaddedConv(8, (7, 7), edge_padding=4, padding=padding)
        variables = conv.init(jax.random.key(0), x)
        assert ("custom_vjp" in str(jax.make_jaxpr(conv.apply)(variables, x))) == split


def direct_phase_neutral(detail, hole, periods, radius):
    """`detail_transfer.phase_neutral` written out pixel by pixel: for each hole pixel, the
    mean of its phase's hole pixels in the blocks within `radius` of its own block, minus the
    mean of all the hole pixels there, scaled by the pixel's share of the window's energy."""
    import cv2

    result = detail.astype(np.float64)
    for period in periods:
        energy = (result**2).mean(axis=-1) * hole
        near = cv2.blur(energy, (period, period))
        wide = cv2.blur(energy, (2 * radius * period + 1,) * 2)
        share = np.sqrt(np.clip(near / np.maximum(wide, 1e-12), 0.0, 1.0))
        corrected = result.copy()
        for y, x in zip(*np.nonzero(hole), strict=True):
            block_y, block_x = y // period, x // period
            rows = slice(max(0, (block_y - radius) * period), (block_y + radius + 1) * period)
            cols = slice(max(0, (block_x - radius) * period), (block_x + radius + 1) * period)
            window, window_hole = result[rows, cols], hole[rows, cols]
            phase = np.zeros_like(window_hole)
            phase[(y - rows.start) % period :: period, (x - cols.start) % period :: period] = True
            phase_mean = window[window_hole & phase].mean(axis=0)
            corrected[y, x] -= (phase_mean - window[window_hole].mean(axis=0)) * share[y, x]
        result = corrected
    return result


def test_block_window_sums_are_the_windows_sums():
    values = RNG.standard_normal((7, 9, 5)).astype(np.float32)
    sums = detail_transfer._block_window_sums(values, 2)
    for y, x in [(0, 0), (3, 4), (6, 8), (2, 7)]:
        window = values[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
        np.testing.assert_allclose(sums[y, x], window.sum(axis=(0, 1)), atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_strided_box_sums_add_each_pixels_own_phase_over_the_blocks_around_it(channels):
    period, radius = 3, 1
    values = RNG.standard_normal((12, 15, channels)).astype(np.float32)
    sums = detail_transfer._strided_box_sums(values, period, radius)
    for y, x in [(0, 0), (4, 7), (11, 14), (6, 2), (9, 13)]:
        block_y, block_x = y // period, x // period
        rows = range(max(0, block_y - radius), min(4, block_y + radius + 1))
        cols = range(max(0, block_x - radius), min(5, block_x + radius + 1))
        expected = sum(
            values[i * period + y % period, j * period + x % period] for i in rows for j in cols
        )
        np.testing.assert_allclose(sums[y, x], expected, atol=1e-5)


@pytest.mark.parametrize("shape,box", [((30, 41), (4, 27, 6, 35)), ((23, 19), (0, 23, 3, 19))])
def test_phase_neutral_is_the_phase_offsets_written_out(shape, box):
    detail = RNG.standard_normal((*shape, 3)).astype(np.float32)
    detail[::4, ::3] += 1.0  # offsets at the periods below
    hole = np.zeros(shape, bool)
    hole[box[0] : box[1], box[2] : box[3]] = True
    hole[box[0] + 2, box[2] : box[2] + 4] = False  # not a rectangle
    neutral = detail_transfer.phase_neutral(detail, hole, periods=(4, 3), radius=2)
    expected = direct_phase_neutral(detail, hole, periods=(4, 3), radius=2)
    np.testing.assert_allclose(neutral, expected, atol=1e-5)
    assert np.abs(neutral - detail).max() > 0.1  # it did correct something


def test_overlap_add_is_the_gather_of_every_patch():
    """The detail's patches mixed and pasted one cell at a time (`_overlap_add`) against the
    formulation it replaced: every patch's pixels gathered at once, mixed by an einsum."""
    source = RNG.standard_normal((40, 50, 3)).astype(np.float32)
    size, cells, k = 6, 7, 3
    tops = RNG.integers(0, 40 - size, (cells, k))
    lefts = RNG.integers(0, 50 - size, (cells, k))
    gains = RNG.random((cells, k)).astype(np.float32)
    corners = RNG.integers(0, 5, (cells, 2)) * (size // 2)  # overlapping cells
    got = detail_transfer._overlap_add(source, tops, lefts, gains, corners, size, (20, 20))

    span = np.arange(size)
    patches = source[tops[:, :, None, None] + span[:, None], lefts[:, :, None, None] + span]
    window = detail_transfer._window(size)[:, None] * detail_transfer._window(size)[None, :]
    mixed = np.einsum("tk,tkyxc->tyxc", gains, patches) * window[..., None]
    expected = np.zeros((20, 20, 3), np.float32)
    for (row, col), patch in zip(corners, mixed, strict=True):
        expected[row : row + size, col : col + size] += patch
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(expected).max() > 0.5
