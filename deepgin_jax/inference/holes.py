"""Masks: the caller's mask -> the hole the network sees.

Grey values by `image_io.mask_values` (white / 255 / 1.0 / True = hole; `invert` for the other
polarity), binarised at `threshold` on the 0-255 scale, optionally dilated by a disc of radius
`dilate` pixels. "reference" mode keeps the soft 8-bit mask instead (`prepare_soft_mask`): it is
not thresholded, and `invert` (255 - m) and `dilate` (a grey max filter) apply to it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

from deepgin_jax.image_io import mask_values
from deepgin_jax.inference.options import MAX_DILATE, MaskOptions

DEFAULT_THRESHOLD = 127  # "auto" mode's mask threshold (0-255 scale) when none is given


class MaskSizeError(ValueError):
    """The mask's size differs from the image's (and resizing it was not asked for)."""


def _match_size(values: np.ndarray, size: tuple[int, int], resize: bool) -> np.ndarray:
    height, width = size
    if values.shape == (height, width):
        return values
    if not resize:
        raise MaskSizeError(
            f"the mask is {values.shape[1]}x{values.shape[0]} (width x height) but the image is "
            f"{width}x{height}; pass resize_mask=True (CLI: --resize-mask) to resize the mask "
            "with nearest-neighbour sampling"
        )
    resized = Image.fromarray(values.astype(np.float32), "F").resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized, np.float32)


def disc(radius: int) -> np.ndarray:
    """The disc structuring element of `dilate`: uint8 [2r+1, 2r+1], 1 where x^2 + y^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


# `_dilate` runs the max filter while radius^2 is at most this times the mask's grey levels
# (measured: about where the two methods cost the same).
_DISC_AREA_PER_LEVEL = 1000


def _dilate(values: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation (a max filter) of uint8 [H, W] with `disc(radius)`; no-op for 0.

    A small disc runs `cv2.dilate`, whose cost grows with the disc's area (radius 64 on
    2560x1600: 2.3 s, radius 256: 46 s); a larger one runs a threshold decomposition, one
    Euclidean distance transform per grey level the mask holds (one for a binary mask; 0.4-1
    s each on 2560x1600 at any radius): a pixel reaches level v when a pixel of level >= v
    lies within the disc, x^2 + y^2 <= r^2. Both give the same result."""
    if not 0 <= radius <= MAX_DILATE:
        raise ValueError(f"dilate must be from 0 to {MAX_DILATE} pixels, got {radius}")
    if radius == 0:
        return values
    levels = np.unique(values[values > 0])
    if radius * radius <= _DISC_AREA_PER_LEVEL * len(levels):
        return cv2.dilate(values, disc(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    result = np.zeros_like(values)
    for level in levels:  # ascending: a higher level overwrites
        # Distance to the nearest pixel of this level or above (exact Euclidean); the squared
        # distances are integers, so comparing them with r^2 + 1/2 absorbs round-off.
        distance = cv2.distanceTransform(
            (values < level).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        ).astype(np.float64)
        result[distance * distance <= radius * radius + 0.5] = level
    return result


def prepare_mask(
    mask: Any,
    size: tuple[int, int],
    *,
    invert: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    dilate: int = 0,
    resize: bool = False,
) -> np.ndarray:
    """The binary hole mask the network sees: bool [H, W], True = hole.

    Steps: grey values on the 0-255 scale (`image_io.mask_values`); nearest-neighbour resize to
    `size` = (H, W) if `resize`, else `MaskSizeError` on a mismatch; hole = value > threshold;
    `invert` swaps hole and known; `dilate` grows the hole by a disc of that radius.
    """
    values = _match_size(mask_values(mask), size, resize)
    hole = values > threshold
    if invert:
        hole = ~hole
    return _dilate(hole.astype(np.uint8), dilate).astype(bool)


def prepare_soft_mask(
    mask: Any, size: tuple[int, int], *, invert: bool = False, dilate: int = 0, resize: bool = False
) -> np.ndarray:
    """The reference's un-binarised 8-bit mask, uint8 [H, W], 255 = hole (spec 7 step 7).

    Values are rounded to 8 bits, resized (nearest) if asked, inverted (255 - m) if asked and
    grey-dilated (max filter over a disc) by `dilate`; no threshold is applied.
    """
    values = _match_size(mask_values(mask), size, resize)
    soft = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if invert:
        soft = 255 - soft
    return _dilate(soft, dilate)


def _binary_hole(mask: Any, size: tuple[int, int], options: MaskOptions) -> np.ndarray:
    """`prepare_mask` with `options`: bool [H, W]."""
    threshold = DEFAULT_THRESHOLD if options.threshold is None else options.threshold
    return prepare_mask(
        mask,
        size,
        invert=options.invert,
        threshold=threshold,
        dilate=options.dilate,
        resize=options.resize,
    )


def _soft_hole(mask: Any, size: tuple[int, int], options: MaskOptions) -> np.ndarray:
    """`prepare_soft_mask` with `options` (whose threshold `options.check_options` refused in
    reference mode): uint8 [H, W]."""
    return prepare_soft_mask(
        mask, size, invert=options.invert, dilate=options.dilate, resize=options.resize
    )
