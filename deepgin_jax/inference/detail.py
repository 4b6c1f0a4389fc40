"""Full-resolution detail for a fill made at low resolution: contextual residual aggregation.

A hole filled at a lower scale and upsampled is smooth: the network never saw the photo's fine
texture. HiFill (Yi et al., "Contextual residual aggregation for ultra high-resolution image
inpainting", CVPR 2020) borrows it from the known region. The residual of the known region,

    residual = photo - upsample(low-resolution composite)

is its detail above the low-resolution scale. The crop is cut into cells; each hole cell gets
the weighted mean of the known cells' full-resolution residual patches, weighted by a softmax of
the similarity of the two cells' neighbourhoods in the low-resolution fill (3x3 cells around
each), which the network made coherent; the result is added to the upsampled fill inside the
hole. Pure NumPy: one [hole cells, known cells] distance matrix and one product with the
residual patches, both bounded by the number of cells (`MAX_CELLS`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

CELL = 4  # a cell's side in low-resolution pixels
DESCRIPTOR = 3  # a cell's descriptor: its low-resolution pixels area-resampled to 3x3
TEMPERATURE = 0.5  # softmax temperature, relative to each hole cell's nearest distance
TOP_K = 8  # known cells a hole cell draws from (a few: an average of many is flat)
MAX_CELLS = 8192  # bounds the distance matrix (the known cells are strided down to fit)


def _cells(array: np.ndarray, cell: int) -> np.ndarray:
    """[gh*cell, gw*cell, C] -> [gh, gw, cell*cell*C]."""
    gh, gw = array.shape[0] // cell, array.shape[1] // cell
    blocks = array.reshape(gh, cell, gw, cell, -1).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(gh, gw, -1)


def _neighbourhoods(descriptors: np.ndarray) -> np.ndarray:
    """[gh, gw, D] -> [gh, gw, 9*D]: each cell's descriptor with its 8 neighbours' (edge
    cells repeat the border)."""
    padded = np.pad(descriptors, ((1, 1), (1, 1), (0, 0)), mode="edge")
    gh, gw = descriptors.shape[:2]
    shifted = [padded[i : i + gh, j : j + gw] for i in range(3) for j in range(3)]
    return np.concatenate(shifted, axis=-1)


def transfer_detail(
    low_fill: np.ndarray,
    residual: np.ndarray,
    hole: np.ndarray,
    *,
    cell: int = CELL,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
) -> np.ndarray:
    """The hole's borrowed detail, float32 [H, W, 3] (zero outside the hole's cells).

    Args:
      low_fill: float [h, w, 3], the low-resolution composite (known pixels and the fill).
      residual: float [H, W, 3], the photo minus the upsampled composite; read only where
        `hole` is False and away from it.
      hole: bool [H, W] at full resolution.
      cell: a cell's side in low-resolution pixels.
      temperature: the softmax's, as a multiple of each hole cell's nearest squared distance.
      top_k: how many of the most similar known cells each hole cell mixes.
    """
    height, width = hole.shape
    low_h, low_w = low_fill.shape[:2]
    size = max(1, round(cell * max(height / low_h, width / low_w)))  # a cell at full res
    gh, gw = math.ceil(height / size), math.ceil(width / size)
    padded_h, padded_w = gh * size, gw * size
    pad = ((0, padded_h - height), (0, padded_w - width))
    hole_cells = _cells(np.pad(hole, pad, mode="edge")[..., None], size).any(axis=-1)
    residual_cells = _cells(np.pad(residual.astype(np.float32), (*pad, (0, 0))), size)
    low = cv2.resize(
        low_fill.astype(np.float32),
        (gw * DESCRIPTOR, gh * DESCRIPTOR),
        interpolation=cv2.INTER_AREA,
    )
    descriptors = _neighbourhoods(
        _cells(low.reshape(gh * DESCRIPTOR, gw * DESCRIPTOR, 3), DESCRIPTOR)
    )
    # Known cells: no hole pixel in them or their neighbours (the residual there is clean).
    near_hole = cv2.dilate(hole_cells.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    targets = np.flatnonzero(hole_cells.ravel())
    sources = np.flatnonzero(~near_hole.ravel())
    detail = np.zeros((gh * gw, residual_cells.shape[-1]), np.float32)
    if targets.size == 0 or sources.size == 0:
        return np.zeros((height, width, 3), np.float32)
    if sources.size > MAX_CELLS:
        sources = sources[:: math.ceil(sources.size / MAX_CELLS)]
    flat = descriptors.reshape(gh * gw, -1).astype(np.float32)
    a, b = flat[targets], flat[sources]
    distances = (
        (a * a).sum(axis=1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(axis=1)[None, :]
    ).clip(min=0.0)
    k = min(top_k, sources.size)
    nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
    chosen = np.take_along_axis(distances, nearest, axis=1)
    scale = temperature * np.maximum(chosen.min(axis=1, keepdims=True), 1e-6)
    weights = np.exp(-(chosen - chosen.min(axis=1, keepdims=True)) / scale)
    weights /= weights.sum(axis=1, keepdims=True)
    patches = residual_cells.reshape(gh * gw, -1)[sources]
    detail[targets] = np.einsum("tk,tkd->td", weights, patches[nearest])
    image = detail.reshape(gh, gw, size, size, 3).transpose(0, 2, 1, 3, 4)
    return image.reshape(padded_h, padded_w, 3)[:height, :width]
