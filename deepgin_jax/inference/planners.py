"""Planners: one image and its mask -> network work items and the step that finishes the image.

`prepare` turns the caller's mask into the planner's mask (nonzero = hole); `plan` returns a
`_Job` whose finish() gives (result [H, W, 3] in rgb's dtype, changed bool [H, W]). Outside the
(dilated) hole the result is bit-identical to the input: the prediction is pasted in with the
binary mask, in the input's own dtype (16-bit input keeps all 16 bits).

* `_AutoPlanner` ("auto" mode): an image whose long side is at most `max_direct_size` goes
  through the network once, padded to a multiple of 8 and to at least 16 pixels a side (enlarged
  first by up to `upscale` times, `geometry.upsample_known`; the fill is sampled back down by
  area average and only its hole pixels are pasted in); a larger one is padded to a multiple of
  `tile_size` and split into polyphase sub-images (`geometry.split_subimages`). Nothing is
  resampled. The fill meets the photo by `blend` (`blending.BLENDERS`).
* `_CropPlanner` (the "crop" strategy): the network sees only `geometry.crop_box` of the photo;
  outside the box the photo is not read by the network and is returned exactly.
* `_ReferencePlanner` ("reference" mode): spec 7 step by step (bicubic resize to multiples of
  256, transposed sub-images, x5 ensemble with uint8 truncations, bicubic resize back, the 1/2
  down-up blur, composite with the original soft mask), for parity with the released results.
  It works on 8-bit pixels (16-bit input is rounded to 8 bits for the network; known pixels
  keep all 16).
* `_WholeImagePlanner`: a method without a network (the classical baselines).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from deepgin_jax import image_io
from deepgin_jax.blending import BLENDERS
from deepgin_jax.image_io import convert_pixels
from deepgin_jax.inference.batching import _Job, _SubImageSum
from deepgin_jax.inference.geometry import (
    MIN_SIZE,
    SIZE_MULTIPLE,
    crop_box,
    merge_subimages,
    mirror_pad,
    round_up,
    split_subimages,
    upsample_known,
    upscaled_size,
)
from deepgin_jax.inference.holes import _binary_hole, _soft_hole

# What a method without a network sees in the hole (its own pixels never reach it), and its
# output where nothing is known (a hole covering the whole image): the middle grey.
HOLE_GREY = 128


def _composite(
    rgb: np.ndarray, hole: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes prediction [H, W, 3] (float in [0, 1], or uint8) into the hole of rgb, in rgb's
    dtype (a float prediction is rounded to the nearest level for uint8 / uint16 input)."""
    result = rgb.copy()
    result[hole] = convert_pixels(prediction[hole], rgb.dtype)  # only the hole's pixels
    return result, hole


def _blend(
    rgb: np.ndarray, hole: np.ndarray, prediction: np.ndarray, blend: str
) -> tuple[np.ndarray, np.ndarray]:
    """`_composite` of the prediction once the blend named `blend` (`blending.BLENDERS`) has
    made it meet the known pixels."""
    return _composite(rgb, hole, BLENDERS[blend](rgb, hole, prediction))


@dataclasses.dataclass(frozen=True)
class _AutoPlanner:
    """The "auto" mode: a small image whole (enlarged up to `upscale` times), a large one as
    polyphase sub-images."""

    tile_size: int
    max_direct_size: int
    transforms: tuple[tuple[Callable, Callable], ...]
    upscale: float = 1.0
    blend: str = "paste"
    prepare = staticmethod(_binary_hole)

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        height, width = hole.shape
        size = None
        if max(height, width) <= self.max_direct_size:
            size = upscaled_size(height, width, self.upscale, self.max_direct_size)
        if size is None:
            return self._plan(rgb, hole, self.blend)
        job = self._plan(*upsample_known(rgb, hole, size), "paste")

        def finish() -> tuple[np.ndarray, np.ndarray]:
            filled, _ = job.finish()
            prediction = cv2.resize(filled, (width, height), interpolation=cv2.INTER_AREA)
            return _blend(rgb, hole, prediction.reshape(height, width, 3), self.blend)

        return _Job(job.items, finish)

    def _plan(self, rgb: np.ndarray, hole: np.ndarray, blend: str) -> _Job:
        height, width = hole.shape
        direct = max(height, width) <= self.max_direct_size
        multiple = SIZE_MULTIPLE if direct else self.tile_size
        padded_h = round_up(height, multiple, MIN_SIZE)
        padded_w = round_up(width, multiple, MIN_SIZE)
        rgb_p = mirror_pad(rgb, padded_h, padded_w)
        hole_p = mirror_pad(hole, padded_h, padded_w)
        white = np.array(image_io.full_scale(rgb.dtype), rgb.dtype)
        masked = np.where(hole_p[..., None], white, rgb_p)
        if direct:
            factors = (1, 1)
            masked_subs, hole_subs = masked[None], hole_p[None]
        else:
            factors = (padded_h // self.tile_size, padded_w // self.tile_size)
            masked_subs = split_subimages(masked, self.tile_size)
            hole_subs = split_subimages(hole_p, self.tile_size)
        accumulator = _SubImageSum(masked_subs.shape[0], masked_subs.shape[1:3], quantize=False)
        items = accumulator.items(masked_subs, hole_subs, self.transforms)

        def finish() -> tuple[np.ndarray, np.ndarray]:
            prediction = merge_subimages(accumulator.mean(), factors)[:height, :width]
            return _blend(rgb, hole, prediction, blend)

        return _Job(items, finish)


@dataclasses.dataclass(frozen=True)
class _CropPlanner:
    """The "crop" strategy around an "auto" planner: the network sees only `crop_box` of the
    photo, and the result is pasted back; with `automatic` only when that box covers at most
    `max_fraction` of the image (else the whole image, as "whole")."""

    inner: _AutoPlanner
    factor: float
    min_size: int
    max_fraction: float
    automatic: bool
    prepare = staticmethod(_binary_hole)

    def box(self, hole: np.ndarray) -> tuple[int, int, int, int] | None:
        """`crop_box` of bool [H, W] `hole`, or None when the network is to see it whole."""
        top, left, bottom, right = crop_box(
            hole,
            factor=self.factor,
            min_size=self.min_size,
            max_direct_size=self.inner.max_direct_size,
            tile_size=self.inner.tile_size,
        )
        area = (bottom - top) * (right - left)
        if area == hole.size or (self.automatic and area > self.max_fraction * hole.size):
            return None
        return top, left, bottom, right

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        box = self.box(hole)
        if box is None:
            return self.inner.plan(rgb, hole)
        top, left, bottom, right = box
        window = (slice(top, bottom), slice(left, right))
        job = self.inner.plan(rgb[window], hole[window])

        def finish() -> tuple[np.ndarray, np.ndarray]:
            filled, changed_crop = job.finish()
            result = rgb.copy()
            result[window] = filled
            changed = np.zeros(hole.shape, bool)
            changed[window] = changed_crop
            return result, changed

        return _Job(job.items, finish)


@dataclasses.dataclass(frozen=True)
class _ReferencePlanner:
    """The "reference" mode: spec 7 steps 1-7 on uint8 pixels, with the soft mask."""

    tile_size: int
    transforms: tuple[tuple[Callable, Callable], ...]
    prepare = staticmethod(_soft_hole)

    def plan(self, rgb: np.ndarray, soft: np.ndarray) -> _Job:
        original = convert_pixels(rgb, np.uint8)
        height, width = soft.shape
        tile = self.tile_size
        # Step 1: nearest multiple of 256 (Python's round: halves go to even), at least 256.
        resized_w = max(tile, round(width / tile) * tile)
        resized_h = max(tile, round(height / tile) * tile)
        big = _pil_resize(original, resized_w, resized_h, Image.Resampling.BICUBIC)
        big_mask = _pil_resize(soft, resized_w, resized_h, Image.Resampling.BILINEAR)
        # Step 2: binarise (> 0) and paint the holes white.
        hole = big_mask > 0
        big = np.where(hole[..., None], np.uint8(255), big)
        # Step 3: transposed sub-images.
        factors = (resized_h // tile, resized_w // tile)
        masked_subs = split_subimages(big, tile, transpose=True)
        hole_subs = split_subimages(hole, tile, transpose=True)
        # Step 4: ensemble with the uint8 truncation of every variant.
        accumulator = _SubImageSum(masked_subs.shape[0], (tile, tile), quantize=True)
        items = accumulator.items(masked_subs, hole_subs, self.transforms)

        def finish() -> tuple[np.ndarray, np.ndarray]:
            # Step 5: re-assemble; step 6: resize back and the 1/2 down-up low-pass.
            prediction = merge_subimages(accumulator.mean(), factors, transpose=True)
            prediction = _pil_resize(prediction, width, height, Image.Resampling.BICUBIC)
            half_w, half_h = max(1, int(width * 0.5)), max(1, int(height * 0.5))
            prediction = _pil_resize(prediction, half_w, half_h, Image.Resampling.BICUBIC)
            prediction = _pil_resize(prediction, width, height, Image.Resampling.BICUBIC)
            # Step 7: composite with the soft mask, truncated to uint8.
            weight = soft[..., None] / 255.0
            blended = prediction * weight + ((255.0 - soft[..., None]) / 255.0) * original
            result = blended.astype(np.uint8)
            changed = soft > 0
            if rgb.dtype == np.uint16:
                result = np.where(changed[..., None], convert_pixels(result, np.uint16), rgb)
            elif rgb.dtype != np.uint8:
                result = np.where(changed[..., None], result / 255.0, rgb)
            return result, changed

        return _Job(items, finish)


@dataclasses.dataclass(frozen=True)
class _WholeImagePlanner:
    """A method that fills a whole uint8 image in one call, without a network. It sees the
    hole painted `HOLE_GREY` (some methods, OpenCV's among them, return a fully covered image
    unchanged, or read the hole's pixels); a hole covering the image is filled `HOLE_GREY`."""

    fill: Callable[[np.ndarray, np.ndarray], np.ndarray]
    prepare = staticmethod(_binary_hole)

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        def finish() -> tuple[np.ndarray, np.ndarray]:
            masked = np.where(hole[..., None], np.uint8(HOLE_GREY), convert_pixels(rgb, np.uint8))
            filled = masked if hole.all() else self.fill(np.ascontiguousarray(masked), hole)
            return _composite(rgb, hole, filled)

        return _Job([], finish)


_Planner = _AutoPlanner | _CropPlanner | _ReferencePlanner | _WholeImagePlanner


def _pil_resize(array: np.ndarray, width: int, height: int, method: Image.Resampling) -> np.ndarray:
    """PIL resize of uint8 [H, W] or [H, W, 3] (a copy when the size is unchanged, as PIL)."""
    return np.asarray(Image.fromarray(array).resize((width, height), method))
