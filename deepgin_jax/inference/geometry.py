"""Geometry: padding, pixel-(un)shuffle into sub-images, the x5 self-ensemble's transforms, the
"crop" strategy's box and the enlargement of small images.

Padding mirrors the image and the mask together, so a hole at the border stays a hole in the
padding and none of the hole's content leaks into the context. A large image is padded to a
multiple of `TILE_SIZE` and split by pixel-unshuffle into Fh x Fw sub-images (sub-image (q, p)
holds the pixels at rows q, q+Fh, ... and columns p, p+Fw, ...; spec 7 step 3), each a
subsampled view of the whole photo at the scale the model was trained on. The reference stores
every sub-image transposed; "auto" mode does not, since training already rotates and flips its
polyphase sub-images (spec 5.4), so only bit-parity depends on it.

`upsample_known` enlarges a small image for `upscale`: the hole by nearest neighbour and the
known pixels by bilinear interpolation of the known pixels alone, so no hole pixel's value
reaches the network. Why: the generator's decoder has no skip path above 1/4 resolution, so a
narrow model cannot carry the exact pixels next to a hole through it; on an enlarged image those
pixels span fewer of its 1/4-resolution cells.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

from deepgin_jax.image_io import to_unit_float

CROP_FACTOR = 2.0  # "crop": the holes' box grown by this factor per side (at least tile_size)
# "scaled": a box side per hole side: the hole a third of the box (training: holes of 30-70 %)
SCALED_FACTOR = 3.0
TILE_SIZE = 256  # the training crop size, and the reference's sub-image size
SIZE_MULTIPLE = 8  # the generator needs H and W divisible by 8
MIN_SIZE = 16  # and at least 16: its refinement encoder halves the input four times


def upscaled_size(height: int, width: int, upscale: float, max_side: int) -> tuple[int, int] | None:
    """The (H, W) an image runs at: scaled by min(upscale, max_side / its long side), rounded;
    None when that does not enlarge it."""
    factor = min(upscale, max_side / max(height, width))
    if factor <= 1:
        return None
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return None if size == (height, width) else size


def upsample_known(
    rgb: np.ndarray, hole: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """rgb [H, W, 3] (any pixel dtype) and bool hole [H, W] enlarged to `size` = (h, w).

    The hole by nearest neighbour; the pixels by bilinear interpolation of the known pixels
    alone (a normalised convolution: up(rgb * known) / up(known)), so that no value from inside
    the hole reaches the enlarged image. Returns (float32 [h, w, 3] in [0, 1], bool [h, w]).
    """
    height, width = size
    known = (~hole).astype(np.float32)
    weighted = to_unit_float(rgb).astype(np.float32, copy=False)  # new: scaled in place
    weighted *= known[..., None]
    numerator = cv2.resize(weighted, (width, height), interpolation=cv2.INTER_LINEAR)
    denominator = cv2.resize(known, (width, height), interpolation=cv2.INTER_LINEAR)
    big_hole = cv2.resize(
        hole.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT
    ).astype(bool)
    big_hole |= denominator <= 0  # no known pixel within reach: nothing to interpolate
    big = numerator.reshape(height, width, 3) / np.maximum(denominator, 1e-6)[..., None]
    big = np.where(big_hole[..., None], np.float32(1.0), np.clip(big, 0.0, 1.0))
    return big.astype(np.float32), big_hole


def round_up(value: int, multiple: int, minimum: int = 0) -> int:
    """The smallest multiple of `multiple` that is >= value, >= multiple and >= minimum."""
    return max(multiple, minimum, math.ceil(value / multiple) * multiple)


def mirror_pad(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pads the bottom and right of [H, W, ...] to [height, width, ...] (repeatedly
    when the padding is wider than the image; a 1-pixel side is repeated)."""
    if array.shape[:2] == (height, width):
        return array
    pad = [(0, height - array.shape[0]), (0, width - array.shape[1])]
    return np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode="reflect")


def split_subimages(big: np.ndarray, tile: int, *, transpose: bool = False) -> np.ndarray:
    """Pixel-unshuffle of [Fh*tile, Fw*tile, ...] into [Fh*Fw, tile, tile, ...] (spec 7 step 3).

    Sub-image q*Fw + p holds big[q::Fh, p::Fw]: sub[i, j] = big[q + Fh*i, p + Fw*j]. With
    `transpose` each sub-image is stored transposed, sub[i, j] = big[q + Fh*j, p + Fw*i], as in
    the reference.
    """
    fh, fw = big.shape[0] // tile, big.shape[1] // tile
    rest = big.shape[2:]
    extra = tuple(range(4, 4 + len(rest)))
    # [i, q, j, p, ...] -> [q, p, i, j, ...]
    subs = big.reshape(tile, fh, tile, fw, *rest).transpose(1, 3, 0, 2, *extra)
    if transpose:
        subs = subs.swapaxes(2, 3)
    return subs.reshape(fh * fw, tile, tile, *rest)


def merge_subimages(
    subs: np.ndarray, factors: tuple[int, int], *, transpose: bool = False
) -> np.ndarray:
    """The inverse of `split_subimages`: [Fh*Fw, th, tw, ...] -> [Fh*th, Fw*tw, ...]."""
    fh, fw = factors
    grid = subs.reshape(fh, fw, *subs.shape[1:])
    if transpose:
        grid = grid.swapaxes(2, 3)
    tile_h, tile_w, *rest = grid.shape[2:]
    # [q, p, i, j, ...] -> [i, q, j, p, ...]
    grid = grid.transpose(2, 0, 3, 1, *range(4, grid.ndim))
    return grid.reshape(fh * tile_h, fw * tile_w, *rest)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


# (forward, inverse) on [H, W, ...]: identity, rot90, rot180, rot270 (counter-clockwise, as
# PIL's rotate) and left-right flip (spec 7 step 4).
ENSEMBLE_TRANSFORMS: tuple[tuple[Callable, Callable], ...] = (
    (_identity, _identity),
    (functools.partial(np.rot90, k=1), functools.partial(np.rot90, k=-1)),
    (functools.partial(np.rot90, k=2), functools.partial(np.rot90, k=2)),
    (functools.partial(np.rot90, k=3), functools.partial(np.rot90, k=1)),
    (np.fliplr, np.fliplr),
)


def crop_box(
    hole: np.ndarray,
    *,
    factor: float = CROP_FACTOR,
    min_size: int = TILE_SIZE,
    max_direct_size: int = TILE_SIZE,
    tile_size: int = TILE_SIZE,
) -> tuple[int, int, int, int]:
    """The region the "crop" strategy runs the network on: (top, left, bottom, right).

    Per axis: the bounding box of every hole pixel of bool [H, W], its side times `factor`
    and at least `min_size`, then rounded up to the size "auto" mode would pad that crop to
    (a multiple of 8 up to `max_direct_size`, else of `tile_size`) so that real pixels fill
    what would otherwise be mirror padding; centred on the holes, shifted to lie inside the
    image, and cut to the image's side. It always contains every hole pixel.
    """
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    if rows.size == 0:
        return 0, 0, hole.shape[0], hole.shape[1]
    spans = [(int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)]
    sides = [max(min_size, math.ceil((end - start) * factor)) for start, end in spans]
    multiple = SIZE_MULTIPLE if max(sides) <= max_direct_size else tile_size
    box = []
    for (start, end), side, limit in zip(spans, sides, hole.shape, strict=True):
        side = min(limit, round_up(side, multiple, MIN_SIZE))
        first = math.floor((start + end - side) / 2)
        first = min(max(first, end - side), start)  # keeps [start, end) inside
        first = min(max(first, 0), limit - side)
        box.append((first, first + side))
    (top, bottom), (left, right) = box
    return top, left, bottom, right
