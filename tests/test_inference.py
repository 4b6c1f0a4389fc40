"""The Inpainter: masks, sizes, sub-images, ensembling, compositing, reference parity.

Most tests drive the pipeline with NumPy stand-in networks (`Inpainter.from_function`), which
cost nothing to run; the tiny generator runs on two compiled shapes only, (1, 40, 56) and
(4, 64, 64), which the CLI and evaluation tests reuse.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import platform
import subprocess
import sys
import threading

import cv2
import jax
import numpy as np
import pytest
from PIL import Image

from deepgin_jax import blending, inference
from deepgin_jax.checkpointing import load_generator
from deepgin_jax.inference import (
    Inpainter,
    MaskSizeError,
    buckets,
    prepare_mask,
    prepare_soft_mask,
)
from deepgin_jax.inference.batching import _batch_plan
from deepgin_jax.inference.network import GeneratorForward
from tests.inpainting_helpers import RecordingNetwork, ramp_network, tiny_checkpoint

BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR


def random_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def block_mask(height: int, width: int) -> np.ndarray:
    """A block, a thin vertical stripe and the bottom-right corner pixel: bool [H, W]."""
    mask = np.zeros((height, width), bool)
    mask[height // 5 : height // 2, width // 4 : (2 * width) // 3] = True
    mask[:, width // 8] = True
    mask[-1, -1] = True
    return mask


def known_mean_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fills each input's hole with the mean colour of that input's known pixels."""
    masked, known = masked.astype(np.float64), 1.0 - mask.astype(np.float64)
    total = (masked * known).sum(axis=(1, 2), keepdims=True)
    mean = total / np.maximum(known.sum(axis=(1, 2), keepdims=True), 1.0)
    return (masked * known + mean * mask).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sub-images


def test_split_follows_the_index_rule_and_merge_inverts_it():
    tile, fh, fw = 4, 3, 2
    big = np.arange(fh * tile * fw * tile * 2).reshape(fh * tile, fw * tile, 2)
    subs = inference.split_subimages(big, tile)
    subs_t = inference.split_subimages(big, tile, transpose=True)
    assert subs.shape == (fh * fw, tile, tile, 2)
    for q in range(fh):
        for p in range(fw):
            for i in range(tile):
                for j in range(tile):
                    np.testing.assert_array_equal(
                        subs[q * fw + p, i, j], big[q + fh * i, p + fw * j]
                    )
                    np.testing.assert_array_equal(
                        subs_t[q * fw + p, i, j], big[q + fh * j, p + fw * i]
                    )
    np.testing.assert_array_equal(inference.merge_subimages(subs, (fh, fw)), big)
    np.testing.assert_array_equal(inference.merge_subimages(subs_t, (fh, fw), transpose=True), big)


# ---------------------------------------------------------------------------------------------
# Masks


def test_mask_polarity_threshold_and_types():
    size = (2, 3)
    uint8 = np.array([[0, 127, 128], [255, 10, 200]], np.uint8)
    np.testing.assert_array_equal(
        prepare_mask(uint8, size), [[False, False, True], [True, False, True]]
    )
    np.testing.assert_array_equal(
        prepare_mask(uint8, size, threshold=5), [[False, True, True], [True, True, True]]
    )
    np.testing.assert_array_equal(
        prepare_mask(uint8, size, invert=True), [[True, True, False], [False, True, False]]
    )
    floats = np.array([[0.0, 0.49, 0.51], [1.0, 0.2, 0.8]])
    np.testing.assert_array_equal(prepare_mask(floats, size), prepare_mask(uint8, size))
    booleans = uint8 > 127
    np.testing.assert_array_equal(prepare_mask(booleans, size), booleans)
    np.testing.assert_array_equal(prepare_mask(booleans[..., None], size), booleans)
    np.testing.assert_array_equal(prepare_mask(Image.fromarray(uint8), size), booleans)
    np.testing.assert_array_equal(prepare_mask(Image.fromarray(booleans), size), booleans)
    # Colour masks count through their luminance: pure red (L = 76) is not a hole, white is.
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 2] = (255, 255, 255)
    np.testing.assert_array_equal(
        prepare_mask(rgb, size), [[False, False, False], [False, False, True]]
    )
    # A painted layer: constant colour, the strokes in the alpha channel.
    painted = np.zeros((2, 3, 4), np.uint8)
    painted[0, 1, 3] = 255
    np.testing.assert_array_equal(
        prepare_mask(painted, size), [[False, True, False], [False, False, False]]
    )
    np.testing.assert_array_equal(
        prepare_mask(Image.fromarray(painted, "RGBA"), size), prepare_mask(painted, size)
    )
    with pytest.raises(TypeError, match="ambiguous"):
        prepare_mask(np.ones(size, np.int64), size)


def test_dilate_grows_the_hole_by_a_disc():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    mask[0, 8] = True
    grown = prepare_mask(mask, (9, 9), dilate=2)
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = inference.disc(2).astype(bool)
    expected[0:3, 6:9] |= inference.disc(2)[2:, :3].astype(bool)
    np.testing.assert_array_equal(grown, expected)
    assert inference.disc(2).sum() == 13  # x^2 + y^2 <= 4: a disc, not a 5x5 square
    np.testing.assert_array_equal(prepare_mask(mask, (9, 9), dilate=0), mask)
    with pytest.raises(ValueError, match="dilate"):
        prepare_mask(mask, (9, 9), dilate=-1)


def test_mask_of_another_size_is_an_error_unless_resized():
    mask = np.zeros((37, 50), bool)
    with pytest.raises(MaskSizeError, match=r"50x37 .* 53x37") as error:
        prepare_mask(mask, (37, 53))
    assert isinstance(error.value, ValueError)
    small = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(
        prepare_mask(small, (4, 6), resize=True),
        np.kron(small > 0, np.ones((2, 3), int)).astype(bool),
    )
    soft = np.array([[0, 90], [200, 0]], np.uint8)
    np.testing.assert_array_equal(
        prepare_soft_mask(soft, (4, 4), resize=True, invert=True),
        255 - np.kron(soft, np.ones((2, 2), np.uint8)),
    )
    with pytest.raises(MaskSizeError):
        Inpainter.from_function(ramp_network).inpaint(random_image(37, 53), mask)


# ---------------------------------------------------------------------------------------------
# The auto pipeline with stand-in networks


@pytest.mark.parametrize("size", [(37, 53), (300, 200), (1000, 700)])
def test_auto_mode_keeps_size_and_every_known_pixel(size):
    height, width = size
    image = random_image(height, width, seed=height)
    mask = block_mask(height, width)
    out = Inpainter.from_function(ramp_network).inpaint(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert (out[mask] != image[mask]).any()


def _expected_known_means(image: np.ndarray, mask: np.ndarray, padded: tuple, factors: tuple):
    """Each hole pixel gets the mean known colour of its sub-image of the mirror-padded image."""
    pad = ((0, padded[0] - image.shape[0]), (0, padded[1] - image.shape[1]))
    image_p = np.pad(image, (*pad, (0, 0)), mode="reflect").astype(np.float64)
    known_p = ~np.pad(mask, pad, mode="reflect")
    fh, fw = factors
    means = np.zeros((fh, fw, 3))
    for q in range(fh):
        for p in range(fw):
            means[q, p] = image_p[q::fh, p::fw][known_p[q::fh, p::fw]].mean(axis=0)
    rows, cols = np.nonzero(mask)
    expected = image.astype(np.float64).copy()
    expected[rows, cols] = means[rows % fh, cols % fw]
    return expected


@pytest.mark.parametrize(
    ("size", "padded", "factors"),
    [
        ((37, 53), (40, 56), (1, 1)),
        ((300, 200), (512, 256), (2, 1)),
        ((70, 130), (128, 192), (2, 3)),
    ],
)
def test_holes_are_filled_from_the_right_sub_image(size, padded, factors):
    rng = np.random.default_rng(1)
    image = rng.random((*size, 3), dtype=np.float32)
    mask = block_mask(*size)
    tile = 256 if size != (70, 130) else 64
    inpainter = Inpainter.from_function(known_mean_network, tile_size=tile, strategy="polyphase")
    out = inpainter.inpaint(image, mask)
    assert out.dtype == np.float32
    expected = _expected_known_means(image, mask, padded, factors)
    np.testing.assert_allclose(out, expected, atol=2e-6)
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_ensemble_averages_the_five_inverse_transformed_predictions():
    n, a, b = 64, 0.004, 0.007

    def position_network(masked, mask):  # ignores its input: a*row + b*col
        rows = np.arange(masked.shape[1])[:, None]
        cols = np.arange(masked.shape[2])[None, :]
        ramp = (a * rows + b * cols).astype(np.float32)
        return np.broadcast_to(ramp[None, :, :, None], masked.shape)

    image = np.zeros((n, n, 3), np.float32)
    mask = np.ones((n, n), bool)
    out = Inpainter.from_function(position_network, ensemble=True).inpaint(image, mask)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = n - 1
    views = [  # the (row, col) a pixel moves to under each transform
        (i, j),  # identity
        (m - j, i),  # rot90 counter-clockwise
        (m - i, m - j),  # rot180
        (j, m - i),  # rot270
        (i, m - j),  # left-right flip
    ]
    expected = np.mean([a * r + b * c for r, c in views], axis=0)
    np.testing.assert_allclose(out[..., 0], expected, atol=1e-6)
    plain = Inpainter.from_function(position_network).inpaint(image, mask)
    np.testing.assert_allclose(plain[..., 0], a * i + b * j, atol=1e-6)


@pytest.mark.parametrize(
    "kind",
    [
        "rgba",
        "float64",
        "gray2d",
        "gray3d",
        "gray_alpha",
        "pil_rgb",
        "pil_rgba",
        "pil_l",
        "pil_la",
        "pil_p",
        "pil_f",
        "pil_cmyk",
        "pil_ycbcr",
        "pil_lab",
        "pil_hsv",
        "pil_1",
    ],
)
def test_output_type_matches_input_and_alpha_is_kept(kind):
    rgba = random_image(37, 53, 4, seed=3)
    mask = block_mask(37, 53)
    image = {
        "rgba": rgba,
        "float64": rgba[..., :3] / 255.0,
        "gray2d": rgba[..., 0],
        "gray3d": rgba[..., :1],
        "gray_alpha": rgba[..., [0, 3]],
        "pil_rgb": Image.fromarray(rgba[..., :3]),
        "pil_rgba": Image.fromarray(rgba, "RGBA"),
        "pil_l": Image.fromarray(rgba[..., 0]),
        "pil_la": Image.fromarray(rgba[..., [0, 3]]),
        "pil_p": Image.fromarray(rgba[..., :3]).quantize(16),
        "pil_f": Image.fromarray(rgba[..., 0] / np.float32(255)),
        "pil_cmyk": Image.fromarray(rgba[..., :3]).convert("CMYK"),
        "pil_ycbcr": Image.fromarray(rgba[..., :3]).convert("YCbCr"),
        "pil_lab": Image.fromarray(rgba[..., :3]).convert("LAB"),
        "pil_hsv": Image.fromarray(rgba[..., :3]).convert("HSV"),
        "pil_1": Image.fromarray(rgba[..., :3]).convert("1"),
    }[kind]
    out = Inpainter.from_function(ramp_network).inpaint(image, mask)
    assert type(out) is type(image)
    if isinstance(image, Image.Image):
        expected_mode = "RGB" if image.mode == "P" else image.mode
        assert out.mode == expected_mode and out.size == image.size
        before = np.asarray(image.convert(expected_mode))
        after = np.asarray(out)
    else:
        assert out.shape == image.shape and out.dtype == image.dtype
        before, after = image, out
    np.testing.assert_array_equal(after[~mask], before[~mask])
    assert (after[mask] != before[mask]).any()
    if kind in ("rgba", "pil_rgba", "gray_alpha", "pil_la"):
        np.testing.assert_array_equal(after[..., -1], rgba[..., 3])


def test_gray_alpha_image_reaches_the_network_as_rgb():
    rgba = random_image(37, 53, 4, seed=4)
    network = RecordingNetwork()
    out = Inpainter.from_function(network).inpaint(
        Image.fromarray(rgba[..., [1, 3]]), block_mask(37, 53)
    )
    assert out.mode == "LA"
    [(masked, _)] = network.inputs
    known = ~block_mask(37, 53)
    for channel in range(3):
        np.testing.assert_allclose(masked[0, :37, :53, channel][known], rgba[..., 1][known] / 255)


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (40, 1), (5, 7), (8, 8), (8, 40), (16, 3)])
@pytest.mark.parametrize("ensemble", [False, True])
def test_tiny_images_are_padded_to_the_generators_smallest_input(size, ensemble):
    height, width = size
    image = random_image(height, width, seed=height * width)
    mask = np.zeros(size, bool)
    mask[height // 2, width // 2] = True
    network = RecordingNetwork()  # refuses inputs under 16 pixels a side, as the generator
    out = Inpainter(network, ensemble=ensemble).inpaint(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert (out[mask] != image[mask]).any()
    padded = (max(16, -(-height // 8) * 8), max(16, -(-width // 8) * 8))
    assert {call[1:] for call in network.calls} <= {padded, padded[::-1]}
    pil = Inpainter.from_function(network).inpaint(Image.fromarray(image), mask)
    assert pil.size == (width, height)


def sixteen_bit(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Random uint16 pixels whose low bytes matter (not multiples of 257)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, (height, width, channels), dtype=np.uint16)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_uint16_arrays_keep_all_16_bits(channels):
    image = sixteen_bit(37, 53, channels, seed=channels)
    mask = block_mask(37, 53)
    network = RecordingNetwork()
    out = Inpainter.from_function(network).inpaint(image, mask)
    assert out.dtype == np.uint16 and out.shape == image.shape
    np.testing.assert_array_equal(out[~mask], image[~mask])
    if channels in (2, 4):
        np.testing.assert_array_equal(out[..., -1], image[..., -1])
    # The network sees [0, 1]; the prediction comes back rounded to the nearest 16-bit level.
    [(masked, hole)] = network.inputs
    colour = np.broadcast_to(image[..., :1] if channels <= 2 else image[..., :3], (37, 53, 3))
    np.testing.assert_allclose(masked[0, :37, :53][~mask], (colour / 65535.0)[~mask], atol=1e-7)
    if channels == 3:
        prediction = ramp_network(masked, hole)[0, :37, :53]
        expected = np.rint(np.clip(prediction.astype(np.float64), 0, 1) * 65535)
        np.testing.assert_array_equal(out[mask], expected[mask])


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_pil_images_keep_mode_and_bits(mode):
    values = sixteen_bit(37, 53, 1, seed=7)[..., 0]
    source = Image.fromarray(values) if mode == "I;16" else None
    if mode == "I;16B":
        source = Image.frombytes(mode, (53, 37), values.astype(">u2").tobytes())
    elif mode == "I":
        source = Image.fromarray(values.astype(np.int32))
    mask = block_mask(37, 53)
    out = Inpainter.from_function(ramp_network).inpaint(source, mask)
    assert out.mode == mode and out.size == (53, 37)
    after = np.asarray(out).astype(np.int64)
    np.testing.assert_array_equal(after[~mask], values[~mask])
    assert (after[mask] != values[mask]).any()
    with pytest.raises(ValueError, match="16-bit values"):
        Inpainter.from_function(ramp_network).inpaint(
            Image.fromarray(np.full((37, 53), -1, np.int32)), mask
        )


def test_empty_mask_skips_the_network_and_full_mask_warns(caplog):
    network = RecordingNetwork()
    inpainter = Inpainter.from_function(network)
    image = random_image(37, 53)
    out = inpainter.inpaint(image, np.zeros((37, 53), np.uint8))
    assert network.calls == [] and out is not image
    np.testing.assert_array_equal(out, image)
    pil = Image.fromarray(image)
    assert np.array_equal(np.asarray(inpainter.inpaint(pil, np.zeros((37, 53), bool))), image)
    with caplog.at_level(logging.WARNING):
        full = inpainter.inpaint(image, np.ones((37, 53), bool))
    assert "covers the whole 53x37 image" in caplog.text
    assert network.calls == [(1, 40, 56)]
    assert (full != image).any()


@pytest.mark.parametrize("pad", [True, False])
def test_batches_are_shared_across_images_in_powers_of_two(monkeypatch, pad):
    """Padded to a power of two on an accelerator; split into powers of two on a CPU."""
    monkeypatch.setattr(inference.inpainter, "pads_batches", lambda: pad)
    network = RecordingNetwork(known_mean_network)
    inpainter = Inpainter.from_function(network, max_batch=16, strategy="polyphase")
    images = [random_image(300, 200), random_image(1000, 700, seed=1)]
    masks = [block_mask(300, 200), block_mask(1000, 700)]
    outs = inpainter.inpaint_many(images, masks)
    # 2 + 12 sub-images in one batch, or in calls of 8, 4 and 2.
    assert network.calls == (
        [(16, 256, 256)] if pad else [(8, 256, 256), (4, 256, 256), (2, 256, 256)]
    )
    for image, mask, out in zip(images, masks, outs, strict=True):
        np.testing.assert_array_equal(out, inpainter.inpaint(image, mask))
    network.calls.clear()
    Inpainter.from_function(network, max_batch=16, ensemble=True, strategy="polyphase").inpaint(
        images[1], masks[1]
    )
    # 60 inputs: 16 + 16 + 16 + 12 -> 16, or 12 as 8 + 4.
    assert network.calls == [(16, 256, 256)] * (4 if pad else 3) + (
        [] if pad else [(8, 256, 256), (4, 256, 256)]
    )
    network.calls.clear()
    Inpainter.from_function(network, ensemble=True).inpaint(images[0][:37, :53], masks[0][:37, :53])
    # 3 upright + 2 turned inputs.
    expected = [(2, 56, 40), (4, 40, 56)] if pad else [(1, 40, 56), (2, 40, 56), (2, 56, 40)]
    assert sorted(network.calls) == expected


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        Inpainter.from_function(ramp_network, mode="fast")
    with pytest.raises(ValueError, match="max_batch"):
        Inpainter.from_function(ramp_network, max_batch=0)
    with pytest.raises(TypeError, match="dtype"):
        Inpainter(ramp_network, dtype=np.float16)  # a network function sets its own
    inpainter = Inpainter.from_function(ramp_network)
    with pytest.raises(TypeError, match="dtype int32"):
        inpainter.inpaint(np.zeros((8, 8, 3), np.int32), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, 1\|2\|3\|4\]"):
        inpainter.inpaint(np.zeros((8, 8, 5), np.uint8), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        inpainter.inpaint_many([np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((8, 8), bool)])


# ---------------------------------------------------------------------------------------------
# Reference mode against a plain NumPy/PIL statement of spec 7


def spec7_reference(original: np.ndarray, soft_mask: np.ndarray, network) -> np.ndarray:
    """Spec section 7, step by step, with one network call per sub-image variant."""
    oh, ow = soft_mask.shape
    # 1. nearest multiple of 256 (Python rounding), at least 256; bicubic image, bilinear mask.
    rw, rh = int(round(ow / 256) * 256) or 256, int(round(oh / 256) * 256) or 256
    img, msk = Image.fromarray(original), Image.fromarray(soft_mask)
    if (rw, rh) != (ow, oh):
        img, msk = img.resize((rw, rh), BICUBIC), msk.resize((rw, rh), BILINEAR)
    # 2. binarise (> 0), white holes, mask 0/255.
    big = np.array(img)
    hole = np.array(msk) > 0
    big[hole] = 255
    hole255 = hole.astype(np.uint8) * 255
    # 3.-5. transposed polyphase sub-images, x5 ensemble, re-assembly.
    fw, fh = rw // 256, rh // 256
    ii, jj = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    canvas = big.copy()
    for p in range(fw):
        for q in range(fh):
            rows, cols = q + fh * jj, p + fw * ii  # tile[i, j] = big[q + Fh*j, p + Fw*i]
            tile_img, tile_msk = (
                Image.fromarray(big[rows, cols]),
                Image.fromarray(hole255[rows, cols]),
            )
            variants = [
                (tile_img, tile_msk, lambda x: x),
                (tile_img.rotate(90), tile_msk.rotate(90), lambda x: x.rotate(270)),
                (tile_img.rotate(180), tile_msk.rotate(180), lambda x: x.rotate(180)),
                (tile_img.rotate(270), tile_msk.rotate(270), lambda x: x.rotate(90)),
                (
                    tile_img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                    tile_msk.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                    lambda x: x.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                ),
            ]
            predictions = []
            for v_img, v_msk, undo in variants:
                x = np.asarray(v_img, np.float32)[None] / np.float32(255)
                m = np.asarray(v_msk, np.float32)[None, :, :, None] / np.float32(255)
                pred = np.asarray(network(x, m))[0]
                pred8 = np.clip(pred * 255.0, 0, 255).astype(np.uint8)  # truncation
                predictions.append(np.array(undo(Image.fromarray(pred8)), np.float64))
            mean = sum(predictions) / 5.0
            canvas[rows, cols] = np.array(np.round(mean), np.uint8)
    # 6. bicubic back to the original size, then the 1/2 down-up blur.
    pred_img = Image.fromarray(canvas).resize((ow, oh), BICUBIC)
    pred_img = pred_img.resize((int(ow * 0.5), int(oh * 0.5)), BICUBIC).resize((ow, oh), BICUBIC)
    pred = np.array(pred_img)
    # 7. composite with the original soft mask, truncated to uint8.
    out = pred.copy()
    for c in range(3):
        out[:, :, c] = (
            pred[:, :, c] * (soft_mask / 255.0) + ((255.0 - soft_mask) / 255.0) * original[:, :, c]
        )
    return out


def soft_mask(height: int, width: int) -> np.ndarray:
    """A blurred block (soft edges) plus faint noise (values 1-3) along the top rows."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 5 : width // 2] = 255
    mask = np.asarray(
        Image.fromarray(mask).resize((width // 2, height // 2)).resize((width, height))
    )
    mask = mask.copy()
    mask[:3, ::7] = np.random.default_rng(0).integers(1, 4, mask[:3, ::7].shape)
    return mask


@pytest.mark.parametrize("size", [(300, 700), (180, 200), (256, 512), (384, 640)])
def test_reference_mode_reproduces_spec_section_7(size):
    height, width = size
    original = random_image(height, width, seed=width)
    mask = soft_mask(height, width)
    expected = spec7_reference(original, mask, ramp_network)
    inpainter = Inpainter.from_function(ramp_network, mode="reference", max_batch=4)
    assert inpainter.ensemble
    out = inpainter.inpaint(original, mask)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[mask == 0], original[mask == 0])


def test_reference_mode_refuses_a_threshold_and_honours_invert_and_dilate():
    original = random_image(180, 200, seed=6)
    mask = soft_mask(180, 200)
    inpainter = Inpainter.from_function(ramp_network, mode="reference", ensemble=False)
    with pytest.raises(ValueError, match=r"threshold=50 \(CLI: --mask-threshold\).*reference"):
        inpainter.inpaint(original, mask, threshold=50)
    plain = inpainter.inpaint(original, mask)
    np.testing.assert_array_equal(inpainter.inpaint(original, 255 - mask, invert_mask=True), plain)
    dilated = inpainter.inpaint(original, mask, dilate=3)
    grown = prepare_soft_mask(mask, mask.shape, dilate=3)
    np.testing.assert_array_equal(dilated, inpainter.inpaint(original, grown))
    assert (grown > mask).any() and (dilated != plain).any()


def test_reference_mode_with_uint16_input_keeps_16_bits():
    image = sixteen_bit(180, 200, 3, seed=8)
    mask = soft_mask(180, 200)
    inpainter = Inpainter.from_function(ramp_network, mode="reference", ensemble=False)
    out = inpainter.inpaint(image, mask)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    eight_bit = inpainter.inpaint(np.rint(image / 257.0).astype(np.uint8), mask)
    np.testing.assert_array_equal(out[mask > 0], eight_bit[mask > 0].astype(np.uint16) * 257)


def test_reference_mode_with_float_and_pil_input_keeps_known_pixels():
    original = random_image(180, 200, seed=5)
    mask = soft_mask(180, 200)
    inpainter = Inpainter.from_function(ramp_network, mode="reference")
    expected = spec7_reference(original, mask, ramp_network)
    np.testing.assert_array_equal(
        np.asarray(inpainter.inpaint(Image.fromarray(original), Image.fromarray(mask))), expected
    )
    image = original / 255.0
    out = inpainter.inpaint(image, mask)
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    np.testing.assert_allclose(out[mask > 0], expected[mask > 0] / 255.0)


# ---------------------------------------------------------------------------------------------
# The tiny generator


@pytest.fixture(scope="module")
def tiny_inpainter() -> Inpainter:
    return Inpainter.from_checkpoint(
        tiny_checkpoint(), max_batch=4, tile_size=64, strategy="polyphase", parallel_calls=2
    )


def test_tiny_generator_on_odd_sizes_compiles_once_per_shape(tiny_inpainter):
    counts = []
    for height, width in [(37, 53), (300, 200), (1000, 700)]:
        image = random_image(height, width, seed=width)
        mask = block_mask(height, width)
        out = tiny_inpainter.inpaint(image, mask)
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[~mask], image[~mask])
        assert (out[mask] != 255).any()  # the holes were filled, not left white
        counts.append(inference.forward_cache_size())
    # 37x53 runs in the 64x64 bucket; 300x200 (20 sub-images of 64x64, 10 for each of the
    # two parallel calls: 4 + 4 + 2) compiled (4, 64, 64) and (2, 64, 64); 1000x700 (176, 88
    # each) reused (4, 64, 64).
    assert counts[2] == counts[1]
    assert tiny_inpainter.batch_shapes == {(1, 64, 64), (2, 64, 64), (4, 64, 64)}


def test_calls_of_a_new_shape_from_two_threads_compile_it_once(caplog):
    forward = GeneratorForward.from_checkpoint(tiny_checkpoint())
    masked = np.ones((3, 40, 48, 3), np.float32)  # a shape no other test uses
    mask = np.ones((3, 40, 48, 1), np.float32)
    together = threading.Barrier(2, timeout=60)

    def call(_: int) -> np.ndarray:
        together.wait()
        return np.asarray(forward(masked, mask))

    pool = concurrent.futures.ThreadPoolExecutor(2)
    with caplog.at_level(logging.DEBUG), jax.log_compiles(), pool:
        first, second = pool.map(call, range(2))
    compilations = [
        line for line in caplog.text.splitlines() if "Finished XLA compilation of jit(" in line
    ]
    assert len(compilations) == 1, compilations
    np.testing.assert_array_equal(first, second)


def test_parallel_calls_run_at_once_and_change_nothing():
    image, mask = random_image(300, 200), block_mask(300, 200)  # 2 polyphase sub-images
    options = {"strategy": "polyphase", "max_batch": 4}
    expected = Inpainter.from_function(known_mean_network, **options).inpaint(image, mask)
    together = threading.Barrier(2, timeout=30)

    def meeting_network(masked, mask):
        together.wait()  # broken (an error) unless two calls run at once
        return known_mean_network(masked, mask)

    network = RecordingNetwork(meeting_network)
    inpainter = Inpainter.from_function(network, parallel_calls=2, **options)
    np.testing.assert_array_equal(inpainter.inpaint(image, mask), expected)
    assert network.calls == [(1, 256, 256), (1, 256, 256)]  # one sub-image each, not a batch


def test_parallel_calls_default_to_one_per_core_for_a_compiled_generator_only():
    from_checkpoint = Inpainter.from_checkpoint(tiny_checkpoint(), tile_size=64)
    assert from_checkpoint.parallel_calls == len(os.sched_getaffinity(0))  # the tests' CPU
    assert Inpainter.from_function(ramp_network).parallel_calls == 1  # may not be thread-safe
    assert Inpainter.from_function(ramp_network, parallel_calls=3).parallel_calls == 3
    for wrong in (0, 1.5, True):
        with pytest.raises(ValueError, match="parallel_calls must be a whole number >= 1"):
            Inpainter.from_function(ramp_network, parallel_calls=wrong)


def test_batches_are_shared_out_among_parallel_calls():
    assert _batch_plan(11, 4) == [(4, 4), (4, 4), (3, 4)]
    assert _batch_plan(4, 4, parallel_calls=2) == [(2, 2), (2, 2)]
    assert _batch_plan(11, 4, parallel_calls=2) == [(4, 4), (4, 4), (2, 2), (1, 1)]  # 6 and 5
    assert _batch_plan(1, 4, parallel_calls=2) == [(1, 1)]


def test_a_batch_remainder_is_split_into_powers_of_two_without_padding():
    assert _batch_plan(11, 4, pad=False) == [(4, 4), (4, 4), (2, 2), (1, 1)]
    assert _batch_plan(6, 4, parallel_calls=2, pad=False) == [(2, 2), (2, 2), (1, 1), (1, 1)]
    assert _batch_plan(6, 4, parallel_calls=2) == [(3, 4), (3, 4)]
    assert _batch_plan(13, 8, pad=False) == [(8, 8), (4, 4), (1, 1)]
    for count in range(1, 40):  # every input once, every call a size warm-up compiles
        plan = _batch_plan(count, 6, parallel_calls=2, pad=False)
        assert sum(real for real, _ in plan) == count
        assert all(real == size and size in buckets.batch_sizes(6) for real, size in plan)
    assert not inference.batching.pads_batches()  # the tests' CPU


def test_checkpoint_path_and_in_memory_model_agree(tiny_inpainter):
    model, variables = load_generator(tiny_checkpoint())
    # Rates as lists, the way a training checkpoint's JSON metadata restores them.
    model = model.clone(coarse_rates=list(model.coarse_rates))
    in_memory = Inpainter.from_model(model, variables, max_batch=4, tile_size=64)
    image = random_image(37, 53, seed=9)
    mask = block_mask(37, 53)
    # The constructor still takes a checkpoint path, as it did before from_checkpoint.
    from_path = Inpainter(tiny_checkpoint(), max_batch=4, tile_size=64)
    expected = tiny_inpainter.inpaint(image, mask)  # compiled here, whichever test ran before
    before = inference.forward_cache_size()
    np.testing.assert_array_equal(in_memory.inpaint(image, mask), expected)
    np.testing.assert_array_equal(from_path.inpaint(image, mask), expected)
    assert inference.forward_cache_size() == before  # same configuration, shared executable


# ---------------------------------------------------------------------------------------------
# The "crop" strategy: the network sees only a box around the holes


def test_crop_box_grows_the_holes_box_and_stays_inside_the_image():
    hole = np.zeros((300, 400), bool)
    hole[100:130, 200:260] = True  # 30 x 60
    hole[140, 250] = True  # the box is 41 x 60
    # x2: 82 x 120, at least 64, rounded up to the tile (32) as the crop is over 48 a side.
    box = inference.crop_box(hole, factor=2.0, min_size=64, max_direct_size=48, tile_size=32)
    top, left, bottom, right = box
    assert (bottom - top, right - left) == (96, 128)
    assert top <= 100 and bottom >= 141 and left <= 200 and right >= 260
    assert abs((top + bottom) / 2 - 120.5) <= 1 and abs((left + right) / 2 - 230) <= 1
    # Small: at least min_size, rounded to 8 for a crop that runs whole.
    small = np.zeros((300, 400), bool)
    small[10:14, 395:399] = True
    top, left, bottom, right = inference.crop_box(small, factor=2.0, min_size=36)
    assert (bottom - top, right - left) == (40, 40)
    assert top == 0 and right == 400  # shifted inside the image at the corner
    # Never larger than the image.
    assert inference.crop_box(hole, factor=50.0) == (0, 0, 300, 400)


@pytest.mark.parametrize("hole_size", [(6, 6), (20, 24)], ids=["direct", "subimages"])
def test_crop_strategy_keeps_the_rest_and_equals_running_on_the_crop(hole_size):
    image = random_image(160, 224, seed=3)
    hole = np.zeros((160, 224), bool)
    hole[50 : 50 + hole_size[0], 70 : 70 + hole_size[1]] = True
    network = RecordingNetwork(known_mean_network)
    options = {"tile_size": 32, "max_batch": 4}
    cropper = Inpainter.from_function(network, strategy="crop", **options)
    box = cropper.crop_box(hole)
    assert box is not None
    top, left, bottom, right = box
    assert (bottom - top) * (right - left) < hole.size / 4
    result = cropper.inpaint(image, hole)
    outside = np.ones(hole.shape, bool)
    outside[top:bottom, left:right] = False
    np.testing.assert_array_equal(result[outside], image[outside])
    # Every network input was the crop's size (or its sub-images).
    side = max(bottom - top, right - left)
    expected_shapes = {(32, 32)} if side > 32 else {(bottom - top, right - left)}
    assert {call[1:] for call in network.calls} == expected_shapes
    whole = Inpainter.from_function(known_mean_network, strategy="whole", **options)
    by_hand = whole.inpaint(image[top:bottom, left:right], hole[top:bottom, left:right])
    np.testing.assert_array_equal(result[top:bottom, left:right], by_hand)
    # The whole image gives another fill (the known mean spans other pixels): the crop is real.
    assert not np.array_equal(whole.inpaint(image, hole)[hole], result[hole])


def test_polyphase_strategy_crops_only_when_the_box_is_a_small_part_of_the_image():
    image = random_image(160, 224, seed=4)
    small, large = np.zeros((160, 224), bool), np.zeros((160, 224), bool)
    small[60:70, 100:110] = True
    large[10:150, 20:200] = True
    auto = Inpainter.from_function(known_mean_network, tile_size=32, strategy="polyphase")
    crop = Inpainter.from_function(known_mean_network, tile_size=32, strategy="crop")
    whole = Inpainter.from_function(known_mean_network, tile_size=32, strategy="whole")
    assert auto.strategy == "polyphase" and auto.crop_box(small) == crop.crop_box(small)
    assert auto.crop_box(large) is None and whole.crop_box(small) is None
    np.testing.assert_array_equal(auto.inpaint(image, small), crop.inpaint(image, small))
    np.testing.assert_array_equal(auto.inpaint(image, large), whole.inpaint(image, large))
    # A photo no larger than the minimum crop is always whole.
    assert Inpainter.from_function(known_mean_network).crop_box(small) is None


def test_crop_strategy_with_the_generator_equals_the_generator_on_the_crop():
    image = random_image(80, 112, seed=5)
    hole = np.zeros((80, 112), bool)
    hole[30:40, 50:78] = True  # x2 = 20 x 56, at least 40: a 40 x 56 crop in the 64 bucket
    options = {"tile_size": 16, "max_direct_size": 64, "crop_min_size": 40}
    cropper = Inpainter.from_checkpoint(tiny_checkpoint(), strategy="crop", **options)
    top, left, bottom, right = cropper.crop_box(hole)
    assert (bottom - top, right - left) == (40, 56)
    result = cropper.inpaint(image, hole)
    assert cropper.batch_shapes == {(1, 64, 64)}
    whole = Inpainter.from_checkpoint(tiny_checkpoint(), strategy="whole", **options)
    by_hand = whole.inpaint(image[top:bottom, left:right], hole[top:bottom, left:right])
    np.testing.assert_array_equal(result[top:bottom, left:right], by_hand)
    outside = np.ones(hole.shape, bool)
    outside[top:bottom, left:right] = False
    np.testing.assert_array_equal(result[outside], image[outside])
    assert (result[hole] != image[hole]).any()


def test_strategy_options_are_checked():
    with pytest.raises(ValueError, match="strategy must be one of"):
        Inpainter.from_function(ramp_network, strategy="tiles")
    with pytest.raises(ValueError, match="cannot apply in reference mode"):
        Inpainter.from_function(ramp_network, mode="reference", strategy="crop")
    assert Inpainter.from_function(ramp_network, mode="reference").strategy == "whole"
    with pytest.raises(ValueError, match="crop_factor"):
        Inpainter.from_function(ramp_network, crop_factor=0.5)


# ---------------------------------------------------------------------------------------------
# Upscale: small images run enlarged


def blur_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A 5x5 box blur of the masked input: every output pixel mixes its neighbours, so a hole
    pixel's value anywhere in the input would reach the hole's fill."""
    padded = np.pad(masked, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    height, width = masked.shape[1:3]
    windows = [padded[:, i : i + height, j : j + width] for i in range(5) for j in range(5)]
    return np.mean(windows, axis=0).astype(np.float32)


@pytest.mark.parametrize(
    "size, upscale, network_input",
    [
        ((37, 53), 2.0, (80, 112)),  # enlarged x2 to 74x106, padded to multiples of 8
        ((200, 100), 2.0, (256, 128)),  # x1.28: no more than max_direct_size
        ((128, 128), 1.5, (192, 192)),
        ((256, 200), 2.0, (256, 200)),  # already max_direct_size: as it is
        ((300, 200), 2.0, (256, 256)),  # sub-images, never enlarged
        ((37, 53), 1.0, (40, 56)),  # off
    ],
)
def test_upscale_enlarges_only_small_images_and_keeps_known_pixels(size, upscale, network_input):
    network = RecordingNetwork(known_mean_network)
    image, hole = random_image(*size), block_mask(*size)
    inpainter = Inpainter.from_function(network, upscale=upscale, strategy="polyphase")
    out = inpainter.inpaint(image, hole)
    assert network.calls[0][1:] == network_input
    np.testing.assert_array_equal(out[~hole], image[~hole])
    # Inside the hole the fill is the known pixels' mean colour, up to the resampling (at its
    # rim, a fractional enlargement also averages in the enlarged known pixels).
    interior = cv2.erode(hole.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    known_mean = image[~hole].mean(axis=0)
    assert np.abs(out[interior].astype(float) - known_mean).max() <= 6


def test_upscale_hides_the_holes_content_from_the_network():
    image, hole = random_image(40, 48), block_mask(40, 48)
    other = image.copy()
    other[hole] = 255 - other[hole]  # differs only inside the hole
    inpainter = Inpainter.from_function(blur_network, upscale=2.0)
    filled, filled_other = inpainter.inpaint(image, hole), inpainter.inpaint(other, hole)
    np.testing.assert_array_equal(filled[hole], filled_other[hole])
    # ... while the fill does come from the enlarged known pixels next to the hole.
    plain = Inpainter.from_function(blur_network).inpaint(image, hole)
    assert np.abs(filled[hole].astype(int) - plain[hole].astype(int)).max() > 0


def test_upsample_known_interpolates_known_pixels_only():
    colour = np.array([10, 200, 90], np.uint8)
    image = np.tile(colour, (12, 10, 1))
    hole = np.zeros((12, 10), bool)
    hole[3:7, 2:5] = True
    image[hole] = 0  # must not darken the enlarged known pixels next to the hole
    big, big_hole = inference.upsample_known(image, hole, (24, 20))
    assert big.dtype == np.float32 and big.shape == (24, 20, 3)
    np.testing.assert_array_equal(big_hole, np.kron(hole, np.ones((2, 2), bool)))
    np.testing.assert_allclose(big[~big_hole], np.tile(colour / 255.0, (480 - 48, 1)), atol=1e-6)
    assert (big[big_hole] == 1.0).all()  # white, as the network sees holes
    assert inference.upscaled_size(128, 128, 2.0, 256) == (256, 256)
    assert inference.upscaled_size(256, 100, 2.0, 256) is None
    assert inference.upscaled_size(100, 100, 1.004, 256) is None  # rounds back to 100


def test_settings_default_to_the_networks_recommendation_and_are_checked():
    inpainter = Inpainter.from_function(ramp_network)
    assert (inpainter.upscale, inpainter.blend) == (1.0, "paste")

    class Recommending(RecordingNetwork):
        def __init__(self):
            super().__init__()
            self.recommended = {"upscale": 2.0, "blend": "poisson"}

    inpainter = Inpainter(Recommending())
    assert (inpainter.upscale, inpainter.blend) == (2.0, "poisson")
    inpainter = Inpainter(Recommending(), upscale=1.0, blend="paste")
    assert (inpainter.upscale, inpainter.blend) == (1.0, "paste")
    inpainter = Inpainter(Recommending(), mode="reference")
    assert (inpainter.upscale, inpainter.blend) == (1.0, "paste")
    with pytest.raises(ValueError, match="upscale must be a number >= 1"):
        Inpainter.from_function(ramp_network, upscale=0.5)
    with pytest.raises(ValueError, match="blend must be one of"):
        Inpainter.from_function(ramp_network, blend="feather")
    for setting in ({"upscale": 2.0}, {"blend": "poisson"}):
        with pytest.raises(ValueError, match="cannot apply in reference mode"):
            Inpainter.from_function(ramp_network, mode="reference", **setting)


# ---------------------------------------------------------------------------------------------
# Blend: Poisson


def test_poisson_blend_removes_an_offset_and_keeps_the_fills_detail():
    rng = np.random.default_rng(0)
    height, width = 24, 30
    rows = np.linspace(0.2, 0.8, height)[:, None, None]
    photo = np.broadcast_to(rows, (height, width, 3)).copy()
    photo[..., 1] *= 0.5
    hole = np.zeros((height, width), bool)
    hole[6:18, 8:22] = True
    hole[:, 2] = True  # a thin stripe across the image, touching its border
    detail = 0.05 * rng.standard_normal((height, width, 3))
    fill = photo + detail + 0.3  # the right content and detail, 0.3 too bright
    blended = blending.poisson_blend(photo, hole, fill)
    np.testing.assert_array_equal(blended[~hole], photo[~hole])
    # The offset is gone (pasting the fill would leave 0.3), the detail is kept.
    assert np.abs(blended[hole] - (photo + detail)[hole]).mean() < 0.1 * 0.3
    # Differences between neighbouring hole pixels far from the border are the fill's.
    inner = (slice(10, 14), slice(12, 18))
    np.testing.assert_allclose(
        np.diff(blended[inner], axis=1), np.diff(fill[inner], axis=1), atol=0.02
    )
    # An offset alone is removed exactly, and a hole without known pixels keeps the fill.
    flat = np.full((height, width, 3), 0.4)
    np.testing.assert_allclose(blending.poisson_blend(flat, hole, flat + 0.3), flat, atol=1e-4)
    everything = np.ones((height, width), bool)
    np.testing.assert_allclose(blending.poisson_blend(photo, everything, fill), fill)
    with pytest.raises(ValueError, match="must match"):
        blending.poisson_blend(photo, hole[:-1], fill)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_poisson_blender_is_the_clipped_blend_in_float32(dtype):
    rng = np.random.default_rng(1)
    scale = {np.uint8: 255, np.uint16: 65535, np.float32: 1}[dtype]
    image = (rng.random((20, 26, 3)) * scale).astype(dtype)
    hole = np.zeros((20, 26), bool)
    hole[4:15, 3:20] = True
    fill = np.clip(rng.random((20, 26, 3)) + 0.4, 0, 1.2).astype(np.float32)  # some past 1
    photo = blending.to_unit_float(image)
    expected = np.clip(blending.poisson_blend(photo, hole, fill), 0.0, 1.0).astype(np.float32)
    blended = blending.poisson(image, hole, fill)
    assert blended.dtype == np.float32
    np.testing.assert_array_equal(blended, expected)
    with pytest.raises(ValueError, match="must match"):
        blending.poisson(image, hole[:-1], fill)


def test_the_poisson_blend_and_the_membrane_come_from_one_solve():
    rng = np.random.default_rng(2)
    photo = rng.random((20, 26, 3)).astype(np.float32)
    hole = np.zeros((20, 26), bool)
    hole[4:15, 3:20] = True
    fill = rng.random((20, 26, 3)).astype(np.float32)
    blended, membrane = blending.poisson_and_membrane(photo, hole, fill)
    np.testing.assert_array_equal(blended, blending.poisson(photo, hole, fill))
    expected = blending.poisson_blend(photo, hole, np.zeros_like(photo))[hole]
    np.testing.assert_allclose(membrane, expected, rtol=0, atol=1e-12)
    # The membrane interpolates the border: between the photo's extremes, no copy of the fill.
    assert photo.min() <= membrane.min() and membrane.max() <= photo.max()
    assert blending.poisson_and_membrane(photo, np.zeros_like(hole), fill)[1] is None


@pytest.mark.skipif(platform.system() != "Linux", reason="reads the resident size from /proc")
def test_factorisations_made_in_passing_threads_are_freed():
    """The planner factorises each blend in a new thread beside the network and uses it, and
    drops it, in another; SciPy frees SuperLU's memory only from the thread that allocated it
    (`blending._superlu_thread`)."""
    code = (
        "import ctypes, threading, numpy\n"
        "from deepgin_jax import blending\n"
        "hole = numpy.zeros((500, 500), bool); hole[50:450, 50:450] = True\n"
        "def resident():\n"
        "    ctypes.CDLL(None).malloc_trim(0)\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(status.split('VmRSS:')[1].split()[0]) // 1024\n"
        "made = []\n"
        "sizes = []\n"
        "for _ in range(6):\n"
        "    factorise = lambda: made.append(blending.hole_system(hole, two_level=False))\n"
        "    thread = threading.Thread(target=factorise); thread.start(); thread.join()\n"
        "    made.pop().solve([(numpy.ones((500, 500, 3)), numpy.zeros((500, 500, 3)))])\n"
        "    sizes.append(resident())\n"
        "print(sizes[-1] - sizes[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    # Each factorisation holds about 100 MB: the code before grew by 487 MB over five more.
    assert int(result.stdout) < 100, result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_forked_process_factorises_in_a_thread_of_its_own():
    code = (
        "import os, sys, numpy\n"
        "from deepgin_jax import blending\n"
        "hole = numpy.zeros((40, 40), bool); hole[10:30, 10:30] = True\n"
        "image = numpy.ones((40, 40, 3))\n"
        "blending.poisson_blend(image, hole, image)\n"  # starts the parent's thread
        "child = os.fork()\n"
        "if child == 0:\n"
        "    import signal; signal.alarm(50)\n"  # a child that hangs ends anyway
        "    out = blending.poisson_blend(image, hole, image)\n"
        "    os._exit(0 if numpy.allclose(out, 1.0) else 3)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split()[-1] == "0", result.stdout + result.stderr


def test_the_poisson_blend_solves_its_equations_written_out_pixel_by_pixel():
    """Each hole pixel p: sum over its neighbours q in the image of (f_p - f_q) = sum over
    those in the hole of (fill_p - fill_q), f_q the photo's value where q is known."""
    rng = np.random.default_rng(3)
    photo = rng.random((16, 19, 3))
    fill = rng.random((16, 19, 3))
    hole = rng.random((16, 19)) < 0.45  # scattered pixels, runs, the image's edges
    blended = blending.poisson_blend(photo, hole, fill)
    for y, x in zip(*np.nonzero(hole), strict=True):
        lhs, rhs = np.zeros(3), np.zeros(3)
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            qy, qx = y + dy, x + dx
            if 0 <= qy < 16 and 0 <= qx < 19:
                lhs += blended[y, x] - blended[qy, qx]
                if hole[qy, qx]:
                    rhs += fill[y, x] - fill[qy, qx]
        np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(blended[~hole], photo[~hole])


def test_a_large_hole_is_solved_in_two_levels_within_a_tenth_of_a_level(monkeypatch):
    rng = np.random.default_rng(3)
    height, width = 180, 220
    rows, cols = np.mgrid[:height, :width] / 100.0
    photo = np.stack(
        [0.3 + 0.4 * np.sin(2 * rows + cols), 0.5 + 0.3 * np.cos(3 * cols), 0.2 + 0.25 * rows],
        axis=-1,
    )
    photo = np.clip(photo + 0.05 * rng.standard_normal(photo.shape), 0.0, 1.0)
    hole = np.zeros((height, width), np.uint8)
    cv2.ellipse(hole, (110, 95), (80, 60), 20, 0, 360, 1, -1)
    hole[:40, 190:] = 1  # a second hole, in the image's corner
    hole[170, 20] = 1  # a lone pixel and a thin line read more coarse nodes than they have
    cv2.line(hole, (5, 150), (60, 175), 1, 1)
    hole = hole.astype(bool)
    fill = np.clip(photo + 0.2 + 0.1 * rng.standard_normal(photo.shape), 0.0, 1.2)
    problems = [(photo, fill), (photo, np.zeros_like(fill))]  # the blend and the membrane
    exact = blending.hole_system(hole)
    assert isinstance(exact.solver, blending._DirectSolver)
    monkeypatch.setattr(blending, "TWO_LEVEL_MIN_PIXELS", 1000)  # this hole: 16,535 pixels
    two_levels = blending.hole_system(hole)
    assert isinstance(two_levels.solver, blending._TwoLevelSolver)
    assert 0 < two_levels.solver.band.size < hole.sum()  # the band is solved exactly, not all
    for expected, solved in zip(exact.solve(problems), two_levels.solve(problems), strict=True):
        # 0.06 of a 0-255 level here; 0.42 for the blend without the correction pass.
        assert 255 * np.abs(solved - expected).max() < 0.1
    # Its problems are solved each in a thread of its own: the same as each alone.
    threads = []
    solve = blending._TwoLevelSolver.solve

    def recording(solver, rhs, guess):
        threads.append(threading.get_ident())
        return solve(solver, rhs, guess)

    monkeypatch.setattr(blending._TwoLevelSolver, "solve", recording)
    threaded = two_levels.solve(problems)
    assert len(set(threads)) == 2 and threading.get_ident() not in threads
    for (image, fill), solved in zip(problems, threaded, strict=True):
        alone = two_levels.solve([(image, fill)])[0]
        np.testing.assert_allclose(solved, alone, rtol=0, atol=1e-12)


def offset_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The known pixels' mean colour in the hole, 0.2 too bright: a fill with a seam."""
    return np.clip(known_mean_network(masked, mask) + 0.2 * mask, 0.0, 1.0)


@pytest.mark.parametrize("size", [(37, 53), (300, 200)], ids=["direct", "subimages"])
def test_poisson_blend_in_the_inpainter_meets_the_photo_without_a_seam(size, caplog, monkeypatch):
    image = np.zeros((*size, 3), np.uint8)
    image[..., 0] = np.linspace(40, 200, size[1]).astype(np.uint8)[None, :]
    image[..., 1] = 90
    hole = block_mask(*size)
    options = {"strategy": "polyphase"}
    pasted = Inpainter.from_function(offset_network, **options).inpaint(image, hole)
    blended = Inpainter.from_function(offset_network, blend="poisson", **options).inpaint(
        image, hole
    )
    np.testing.assert_array_equal(blended[~hole], image[~hole])
    error = lambda out: np.abs(out[hole].astype(float) - image[hole]).mean()  # noqa: E731
    assert error(blended) < 0.25 * error(pasted), (error(blended), error(pasted))
    assert (blended[hole] != pasted[hole]).any()
    with caplog.at_level(logging.WARNING), monkeypatch.context() as patch:
        patch.setattr(blending, "POISSON_MAX_PIXELS", int(hole.sum()) - 1)
        too_large = Inpainter.from_function(offset_network, blend="poisson", **options).inpaint(
            image, hole
        )
    np.testing.assert_array_equal(too_large, pasted)
    assert "more than the Poisson blend solves" in caplog.text
    sixteen = Inpainter.from_function(offset_network, blend="poisson", **options).inpaint(
        image.astype(np.uint16) * 257, hole
    )
    assert sixteen.dtype == np.uint16
    np.testing.assert_array_equal(sixteen[~hole], image[~hole].astype(np.uint16) * 257)


# ---------------------------------------------------------------------------------------------
# Options: one frozen object and one check


def test_one_frozen_options_object_with_one_check_for_every_caller():
    options = inference.InpaintOptions(strategy="whole", upscale=1.5)
    inpainter = Inpainter.from_function(ramp_network, options=options)
    assert inpainter.options == dataclasses.replace(
        options,
        ensemble=False,
        max_direct_size=256,
        crop_factor=2.0,
        crop_min_size=256,
        blend="paste",
        buckets=(),  # a network function compiles nothing: no shape buckets
        parallel_calls=1,  # nor is it known to be thread-safe
    )
    assert Inpainter.from_function(ramp_network, options=options, strategy="crop").strategy == (
        "crop"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mode = "reference"
    with pytest.raises(TypeError, match="upscal"):
        Inpainter.from_function(ramp_network, upscal=2.0)
    reference = inference.InpaintOptions(mode="reference")
    assert reference.resolved({"upscale": 2.0, "blend": "poisson"}) == dataclasses.replace(
        reference,
        strategy="whole",
        ensemble=True,
        max_direct_size=256,
        crop_factor=2.0,
        crop_min_size=256,
        upscale=1.0,
        blend="paste",
        buckets=(256,),
        parallel_calls=1,
    )
    crop = r"strategy='crop' \(CLI: --strategy crop\) cannot apply in reference mode"
    with pytest.raises(ValueError, match=crop):
        inference.check_options(dataclasses.replace(reference, strategy="crop"))
    polyphase = r"strategy='polyphase' \(CLI: --strategy polyphase\) cannot apply in reference"
    with pytest.raises(ValueError, match=polyphase):
        inference.check_options(dataclasses.replace(reference, strategy="polyphase"))
    detail = r"detail=True \(CLI: --\[no\]detail\) cannot apply with strategy='crop'"
    with pytest.raises(ValueError, match=detail):
        inference.check_options(inference.InpaintOptions(strategy="crop", detail=True))
    with pytest.raises(ValueError, match="scaled_size=128 cannot apply with reference mode"):
        inference.check_options(dataclasses.replace(reference, scaled_size=128))
    with pytest.raises(ValueError, match="buckets must be multiples of 8"):
        inference.check_options(inference.InpaintOptions(buckets=(60,)))
    with pytest.raises(ValueError, match=r"threshold=9 \(CLI: --mask-threshold\) cannot apply"):
        inference.check_options(reference, inference.MaskOptions(threshold=9))
    with pytest.raises(ValueError, match=r"threshold .* from 0 to 254, got 255"):
        inference.check_options(options, inference.MaskOptions(threshold=255))
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        inference.check_options(dataclasses.replace(options, max_batch=0))


# ---------------------------------------------------------------------------------------------
# Bad pixels


def test_non_finite_known_pixels_are_an_error_and_non_finite_hole_pixels_are_replaced():
    image = random_image(37, 53, seed=5) / np.float32(255)
    hole = block_mask(37, 53)
    inpainter = Inpainter.from_function(ramp_network, upscale=2.0, blend="poisson")
    for bad in (np.nan, np.inf, -np.inf):
        broken = image.copy()
        broken[2, 3, 1] = bad
        with pytest.raises(ValueError, match=r"1 non-finite .* row 2, column 3"):
            inpainter.inpaint(broken, hole)
    many = image.copy()
    many[hole] = np.nan
    many[0, :4] = np.nan
    with pytest.raises(ValueError, match="4 non-finite"):
        inpainter.inpaint(many, hole)
    for options in ({"upscale": 2.0, "blend": "poisson"}, {"mode": "reference"}):
        inpainter = Inpainter.from_function(ramp_network, **options)
        in_hole = image.copy()
        in_hole[hole] = np.nan
        in_hole[hole.nonzero()[0][0], hole.nonzero()[1][0]] = np.inf
        filled = inpainter.inpaint(in_hole, hole)
        assert np.isfinite(filled).all()
        np.testing.assert_array_equal(filled[~hole], image[~hole])
        zeroed = image.copy()
        zeroed[hole] = 0  # what they are replaced by: "reference" mode's resize reads them
        np.testing.assert_array_equal(filled, inpainter.inpaint(zeroed, hole))
        if "upscale" in options:  # "auto" mode never reads a hole pixel
            np.testing.assert_array_equal(filled, inpainter.inpaint(image, hole))


def test_float_pixels_outside_zero_to_one_are_an_error_not_clipped():
    image = random_image(20, 24, seed=6).astype(np.float32)  # the 0-255 scale
    hole = block_mask(20, 24)
    inpainter = Inpainter.from_function(ramp_network)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*0 to 2\d\d.*divide .* by 255"):
        inpainter.inpaint(image, hole)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        inpainter.inpaint(Image.fromarray(image[..., 0]), hole)  # PIL's "F" holds 0-255 too
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], but this image holds -0.5"):
        inpainter.inpaint(image / 255 - 0.5, hole)
    overshoot = image / 255
    overshoot[0, 0] = 1.002  # a resampling's ringing: within one 8-bit level, clipped
    out = inpainter.inpaint(overshoot, hole)
    assert out[0, 0, 0] == np.float32(1.002)  # known pixels are returned as they are


def test_dilate_is_bounded_and_fast_at_any_radius():
    hole = block_mask(37, 53)
    inpainter = Inpainter.from_function(ramp_network)
    image = random_image(37, 53, seed=7)
    for radius in (10_000, inference.MAX_DILATE + 1, -1):
        with pytest.raises(ValueError, match=r"dilate \(CLI: --dilate\) must be .* 0 to 1024"):
            inpainter.inpaint(image, hole, dilate=radius)
    with pytest.raises(ValueError, match="dilate must be from 0 to 1024"):
        prepare_mask(hole, hole.shape, dilate=10_000)
    assert prepare_mask(hole, hole.shape, dilate=inference.MAX_DILATE).all()
    # The distance-transform dilation (large discs) equals the max filter, grey levels too.
    rng = np.random.default_rng(0)
    for trial in range(6):
        values = (rng.random((41, 67)) < 0.01) * rng.choice([60, 200], (41, 67))
        values = values.astype(np.uint8)
        if trial % 2:
            values = (values > 0).astype(np.uint8) * np.uint8(255)
        radius = 50 + 3 * trial  # radius^2 > 1000 per grey level: the distance transform
        assert radius**2 > 1000 * len(np.unique(values[values > 0]))
        expected = cv2.dilate(
            values, inference.disc(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0
        )
        np.testing.assert_array_equal(inference.holes._dilate(values, radius), expected)
