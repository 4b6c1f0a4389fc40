"""Tiles for thin holes: brush strokes filled near full resolution, where their width is the one
the network was trained on.

A stroke group spans most of a photo, so its context box is the whole photo, and downscaling that
to the network's input makes the strokes a few pixels wide and the fill a blur once enlarged.
The training masks' brushes are 10-24 px wide on 128 px crops, which the shipped model runs
enlarged twice: about 32 px at its 256 px input, `STROKE_FRACTION` of its side. `tile_scale`
picks the scale at which the hole's width is that; the box at that scale is covered by
overlapping square tiles, each filled in one network pass (tiles without a hole pixel are
skipped), and the tiles' fills are averaged with weights that fall off towards each tile's
edges (`feather`), where its context is one-sided.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# The brush width the network knows, as a fraction of its input's side (module docstring).
STROKE_FRACTION = 0.125
OVERLAP = 0.25  # neighbouring tiles share this fraction of a tile's side


def hole_width(hole: np.ndarray) -> float:
    """The brush width of bool [H, W] `hole`: the width of a band whose pixels' distances to the
    nearest known pixel (the image's edge counts as known) have the hole's 90th percentile.
    A percentile, since crossing strokes make clumps far wider than the brush; a disc or box
    comes out at about three quarters of its side."""
    inside = cv2.distanceTransform(np.pad(hole, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    if not hole.any():
        return 0.0
    return 2.0 * float(np.percentile(inside[hole], 90)) / 0.9


def tile_scale(hole: np.ndarray, stroke_width: float, largest: float) -> float:
    """The scale (at most `largest`) at which the hole's width is `stroke_width`."""
    return min(largest, stroke_width / max(hole_width(hole), 1.0))


def tile_starts(length: int, tile: int, overlap: float = OVERLAP) -> list[int]:
    """The first pixels of tiles of `tile` pixels covering `length`, spread evenly, each pair of
    neighbours sharing at least `overlap` of a tile."""
    if length <= tile:
        return [0]
    step = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / step) + 1
    return sorted({round(v) for v in np.linspace(0, length - tile, count)})


def feather(height: int, width: int, overlap: float = OVERLAP) -> np.ndarray:
    """float32 [H, W] tile weights: 1 in the middle, falling linearly over the outer `overlap`
    of each side to a small positive value at the edge."""
    axes = []
    for size in (height, width):
        ramp = max(1.0, overlap * size)
        position = np.arange(size, dtype=np.float32) + 0.5
        axes.append(np.minimum(1.0, np.minimum(position, size - position) / ramp))
    return (axes[0][:, None] * axes[1][None, :]).astype(np.float32)
