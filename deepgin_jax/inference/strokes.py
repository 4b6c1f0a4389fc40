"""Thin holes (brush strokes) in a large photo: overlapping tiles at the brushes' scale, or
polyphase sub-images of real pixels without the grid.

A stroke group spans most of a photo, so its context box is the whole photo; downscaled to the
network's input, the strokes are a few pixels wide, the known pixels beside them are averages,
and the fill, enlarged again, is a blur. The training masks' brushes are 10-24 px wide on 128 px
crops, which the shipped model runs enlarged twice: about 32 px at its 256 px input,
`STROKE_FRACTION` of its side. A hole narrower than that once downscaled (`is_thin`) goes through
the polyphase split of its box instead: sub-images of the box's own pixels (each a subsampled
view of the whole box; downscaled first only as far as needed to keep at most
`MAX_SUBIMAGES_PER_SIDE` sub-images a side), so that every pixel reaches the network and none
is resampled. The sub-images are filled independently, so each phase of the interleaved fill
carries its own slowly varying offset: a grid at the sub-image period. `degrid` removes it: the
fill minus its mean over one period window (which holds every phase once) is what differs
between phases, and its local mean over each phase's own pixels is that phase's offset,
subtracted; texture that does not repeat at the period stays.

The tiles (the default, `tile_scale`, `tile_windows`, `blend_tiles`) avoid the sub-images'
aliasing (a decimated view without anti-aliasing) and their grid: the box is area-downscaled
only as far as its brushes need to match the network's (`tile_scale`), covered by overlapping
network-sized tiles, each filled from its own neighbourhood, and the fills are blended by
Hann windows normalised to sum to one, so that neighbouring tiles' disagreements fade into
each other over the overlap instead of leaving a seam or a period.
"""

from __future__ import annotations

import cv2
import numpy as np

# The brush width the network knows, as a fraction of its input's side (module docstring).
STROKE_FRACTION = 0.125
MAX_SUBIMAGES_PER_SIDE = 4  # a larger box is downscaled first (at most 1024 px a side)
DEGRID_SIGMA = 4.0  # the phase offsets' smoothing (Gaussian sigma), in sub-image periods


def hole_width(hole: np.ndarray) -> float:
    """The brush width of bool [H, W] `hole`: the width of a band whose pixels' distances to the
    nearest known pixel (the image's edge counts as known) have the hole's 90th percentile.
    A percentile, since crossing strokes make clumps far wider than the brush; a disc or box
    comes out at about three quarters of its side."""
    if not hole.any():
        return 0.0
    inside = cv2.distanceTransform(np.pad(hole, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    return 2.0 * float(np.percentile(inside[hole], 90)) / 0.9


def is_thin(hole: np.ndarray, scale: float, input_side: int) -> bool:
    """Whether the hole, downscaled by `scale`, would be narrower than the brushes the network
    knows (`STROKE_FRACTION` of its `input_side`)."""
    return hole_width(hole) * scale < STROKE_FRACTION * input_side


def subimage_scale(shape: tuple[int, int], tile: int) -> float:
    """The scale (at most 1) at which an image of `shape` splits into at most
    `MAX_SUBIMAGES_PER_SIDE` squared `tile` x `tile` sub-images."""
    return min(1.0, MAX_SUBIMAGES_PER_SIDE * tile / max(shape))


def degrid(fill: np.ndarray, hole: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 3] `fill` whose hole pixels of each polyphase phase (pixel (y, x) in phase
    (y % Fh, x % Fw), `factors` = (Fh, Fw)) lose that phase's slowly varying offset (module
    docstring); pixels outside the hole are unchanged."""
    fh, fw = factors
    if fh * fw == 1 or not hole.any():
        return fill
    fill = fill.astype(np.float32)
    residual = fill - cv2.blur(fill, (fw, fh), borderType=cv2.BORDER_REFLECT)
    sigma = DEGRID_SIGMA * max(fh, fw)
    rows, cols = np.nonzero(hole)
    out = fill.copy()
    for q in range(fh):
        for p in range(fw):
            phase = np.zeros(hole.shape, np.float32)
            mine = (rows % fh == q) & (cols % fw == p)
            phase[rows[mine], cols[mine]] = 1.0
            total = cv2.GaussianBlur(residual * phase[..., None], (0, 0), sigma)
            weight = cv2.GaussianBlur(phase, (0, 0), sigma)
            offset = (
                total[rows[mine], cols[mine]]
                / np.maximum(weight[rows[mine], cols[mine]], 1e-6)[:, None]
            )
            out[rows[mine], cols[mine]] -= offset
    return out


# Thin holes by overlapping tiles (`tile_scale`, `tile_windows`, `blend_tiles`): the box is
# area-downscaled only as far as its brushes need to reach the width the network knows, and
# covered by overlapping network-sized tiles whose fills are blended by smooth weights.
TILE_STRIDE_FRACTION = 0.75  # the tiles' stride, as a fraction of their side
# The tiles' fill is smooth well above their pixel: the detail transfer takes the known
# region's detail above a third of the tiles' scale (on the 54 eval photos: LPIPS around the
# strokes 0.216 above their own scale, 0.197 above a third, 0.196 above a quarter, which puts
# 6 stroke sets over the grid limit).
TILE_DETAIL_FACTOR = 3
_WEIGHT_FLOOR = 1e-3  # keeps a tile's weight positive at its edge (the image's edge)


def tile_scale(hole: np.ndarray, input_side: int) -> float:
    """The scale (at most 1) at which the hole's brushes (`hole_width`) are as wide as those the
    network knows (`STROKE_FRACTION` of its `input_side`)."""
    width = hole_width(hole)
    return 1.0 if width <= 0 else min(1.0, STROKE_FRACTION * input_side / width)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts covering [0, length), evenly spaced at most `stride` apart, the first and
    last flush with the ends (so that every overlap is at least tile - stride)."""
    if length <= tile:
        return [0]
    count = -(-(length - tile) // stride) + 1
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


def tile_windows(
    shape: tuple[int, int], tile: int, stride_fraction: float = TILE_STRIDE_FRACTION
) -> list[tuple[slice, slice]]:
    """The (rows, cols) windows of overlapping `tile` x `tile` tiles (cut to a smaller image)
    covering an image of `shape`, at a stride of at most `stride_fraction` of the tile."""
    stride = max(1, round(tile * stride_fraction))
    return [
        (slice(top, top + min(tile, shape[0])), slice(left, left + min(tile, shape[1])))
        for top in _starts(shape[0], tile, stride)
        for left in _starts(shape[1], tile, stride)
    ]


def _tile_weight(height: int, width: int) -> np.ndarray:
    """[height, width]: a separable sin^2 (Hann) window, each side's floored above zero (so
    that the tiles' sum, a product of the two sides' sums, stays away from zero everywhere)."""
    rows, cols = (
        np.maximum(np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2, _WEIGHT_FLOOR)
        for n in (height, width)
    )
    return np.outer(rows, cols).astype(np.float32)


def tile_weights(shape: tuple[int, int], windows: list[tuple[slice, slice]]) -> list[np.ndarray]:
    """Per window, its pixels' blending weights: each tile's Hann window divided by the sum of
    the windows over each pixel, so that the weights of the tiles covering a pixel sum to one
    and each fades out smoothly towards its edge inside the image (no seam, no grid)."""
    total = np.zeros(shape, np.float32)
    raw = []
    for rows, cols in windows:
        weight = _tile_weight(rows.stop - rows.start, cols.stop - cols.start)
        total[rows, cols] += weight
        raw.append(weight)
    return [weight / total[window] for weight, window in zip(raw, windows, strict=True)]


def blend_tiles(
    fills: list[np.ndarray], windows: list[tuple[slice, slice]], shape: tuple[int, int]
) -> np.ndarray:
    """float32 [H, W, 3]: the tiles' fills (each [h, w, 3] of its window) blended by
    `tile_weights`; pixels no window covers are 0."""
    out = np.zeros((*shape, 3), np.float32)
    for fill, weight, window in zip(fills, tile_weights(shape, windows), windows, strict=True):
        out[window] += weight[..., None] * fill
    return out
