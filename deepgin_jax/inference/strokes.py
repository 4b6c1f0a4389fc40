"""Thin holes (brush strokes) in a large photo: polyphase sub-images of real pixels, without
the grid.

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
