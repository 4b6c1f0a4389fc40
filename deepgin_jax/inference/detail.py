"""Full-resolution detail for a fill made at low resolution: contextual residual aggregation.

A hole filled at a lower scale and upsampled is smooth: the network never saw the photo's fine
texture. HiFill (Yi et al., "Contextual residual aggregation for ultra high-resolution image
inpainting", CVPR 2020) borrows it from the known region. The residual of the known region,

    residual = photo - upsample(low-resolution composite)

is its detail above the low-resolution scale. Each hole cell gets a mix of the full-resolution
residual patches of the `TOP_K` known cells whose neighbourhoods in the low-resolution fill (which
the network made coherent) are the most similar, weighted by a softmax of that similarity; the
result, times `STRENGTH`, is added to the upsampled fill inside the hole.

Without a grid: a smooth fill makes most hole cells alike, so they draw the same few known
patches, and patches pasted on a fixed lattice repeat at the cell's period (a phase-mean spread
of up to 1.5 grey levels on the eval photos). Here the cells overlap by half and are blended by
windows whose shifted copies sum to one (overlap-add: no seams), and each hole cell reads its
patches at a random offset of up to half a cell from where they matched, so no period survives.
Mixing incoherent patches lowers their contrast; the mix is rescaled to keep the patches'
variance (Heitz and Neyret's variance-preserving blending, HPG 2018), by constant gains (a gain
that followed the windows' overlap would itself be periodic). The copied patches still carry
their sources' own short periods (a JPEG's 8x8 blocks, its 2x2 colour sampling), which random
offsets average out only over many cells: `phase_neutral` removes, wherever the detail has
them, the local differences between its polyphase phase means at periods 5 to 8 (and so at
their divisors: every period from 2 to 8), scaled by how much of the window's detail the
pixel's own neighbourhood holds, so a flat part beside a textured one stays flat.
Pure NumPy: [hole cells, known cells] distances in chunks and one gather of residual patches.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

CELL = 4  # a cell's side in low-resolution pixels
TEMPERATURE = 0.5  # softmax temperature, relative to each hole cell's nearest distance
TOP_K = 3  # known cells a hole cell mixes
STRENGTH = 0.5  # of the variance-preserving mix (measured on the 54 eval photos)
JITTER = 1.0  # the read offsets' reach, in half cells
MAX_SOURCES = 8192  # bounds the distance matrix (the known cells are strided down to fit)
CHUNK = 1024  # hole cells per distance matrix
CONTEXT = 6  # a cell's descriptor: CONTEXT x CONTEXT half cells of the fill (3x3 cells)
SEED = 0
# `phase_neutral`: the periods whose phase means are evened out (their divisors follow), and
# the half-width, in periods, of the square window over which each phase's local mean is taken.
NEUTRAL_PERIODS = (8, 6, 7, 5)
NEUTRAL_RADIUS = 4
# Four overlapping windows carry incoherent patches: the sum's variance is the sum of the
# squared windows, 9/16 on average.
WINDOW_GAIN = 4.0 / 3.0


def _window(size: int) -> np.ndarray:
    """[size]: sin^2, whose copies shifted by size / 2 sum to one."""
    return np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2


def _matches(
    targets: np.ndarray, sources: np.ndarray, temperature: float, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indices into `sources` [T, k], softmax weights [T, k]) of each target's nearest."""
    k = min(top_k, len(sources))
    source_norms = (sources * sources).sum(axis=1)
    nearest, weights = [], []
    for first in range(0, len(targets), CHUNK):
        a = targets[first : first + CHUNK]
        distances = ((a * a).sum(axis=1)[:, None] - 2.0 * (a @ sources.T) + source_norms).clip(
            min=0.0
        )
        index = np.argpartition(distances, k - 1, axis=1)[:, :k]
        chosen = np.take_along_axis(distances, index, axis=1)
        best = chosen.min(axis=1, keepdims=True)
        weight = np.exp(-(chosen - best) / (temperature * np.maximum(best, 1e-6)))
        nearest.append(index)
        weights.append(weight / weight.sum(axis=1, keepdims=True))
    return np.concatenate(nearest), np.concatenate(weights).astype(np.float32)


def _window_sums(values: np.ndarray, radius: int) -> np.ndarray:
    """float [h, w, K] -> the sums over the (2 radius + 1)^2 windows around each position, cut
    at the edges (summed-area tables)."""
    height, width = values.shape[:2]
    table = np.zeros((height + 1, width + 1, values.shape[2]))
    table[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    y0, y1 = (
        np.clip(np.arange(height) - radius, 0, height),
        np.clip(np.arange(height) + radius + 1, 0, height),
    )
    x0, x1 = (
        np.clip(np.arange(width) - radius, 0, width),
        np.clip(np.arange(width) + radius + 1, 0, width),
    )
    return table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]


def phase_neutral(
    detail: np.ndarray,
    hole: np.ndarray,
    periods: tuple[int, ...] = NEUTRAL_PERIODS,
    radius: int = NEUTRAL_RADIUS,
) -> np.ndarray:
    """float [H, W, C] `detail` whose hole pixels of each polyphase phase (pixel (y, x) is in
    phase (y % P, x % P)) lose that phase's local offset: the mean of the phase's hole pixels
    over the (2 radius + 1) P square around them minus the mean of all the hole pixels there,
    for each period P of `periods` in turn. Where the detail is flat there is no offset; away
    from the hole nothing changes."""
    rows, cols = np.nonzero(hole)
    if rows.size == 0 or not periods:
        return detail
    result = detail.copy()
    channels = detail.shape[2]
    margin = radius * max(periods)
    top, left = max(0, rows.min() - margin), max(0, cols.min() - margin)
    bottom = min(hole.shape[0], rows.max() + 1 + margin)
    right = min(hole.shape[1], cols.max() + 1 + margin)
    inside = hole[top:bottom, left:right].astype(np.float64)
    for period in periods:
        height = -(-(bottom - top) // period) * period
        width = -(-(right - left) // period) * period
        weight = np.zeros((height, width))
        weight[: bottom - top, : right - left] = inside
        values = np.zeros((height, width, channels))
        values[: bottom - top, : right - left] = result[top:bottom, left:right] * inside[..., None]
        shape = (height // period, period, width // period, period)
        # [h, w, phase, C] and [h, w, phase]: one plane per phase.
        planes = values.reshape(*shape, channels).transpose(0, 2, 1, 3, 4)
        planes = planes.reshape(shape[0], shape[2], period * period * channels)
        plane_weights = weight.reshape(shape).transpose(0, 2, 1, 3)
        plane_weights = plane_weights.reshape(shape[0], shape[2], period * period)
        sums = _window_sums(planes, radius).reshape(shape[0], shape[2], period * period, channels)
        counts = _window_sums(plane_weights, radius)
        phase_means = sums / np.maximum(counts, 1e-9)[..., None]
        means = sums.sum(axis=2) / np.maximum(counts.sum(axis=2), 1e-9)[..., None]
        offsets = (phase_means - means[:, :, None]) * (plane_weights > 0)[..., None]
        offsets = offsets.reshape(shape[0], shape[2], period, period, channels)
        offsets = offsets.transpose(0, 2, 1, 3, 4).reshape(height, width, channels)
        offsets = offsets[: bottom - top, : right - left]
        # Only as much as the pixel's own period carries: a flat part beside a textured one
        # (whose offsets the window sees) is left flat.
        energy = (result[top:bottom, left:right] ** 2).mean(axis=-1) * inside
        near = cv2.blur(energy, (period, period))
        wide = cv2.blur(energy, (2 * radius * period + 1,) * 2)
        share = np.sqrt(np.clip(near / np.maximum(wide, 1e-12), 0.0, 1.0))
        result[top:bottom, left:right] -= offsets * share[..., None]
    return result


def transfer_detail(
    low_fill: np.ndarray,
    residual: np.ndarray,
    hole: np.ndarray,
    *,
    cell: int = CELL,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    strength: float = STRENGTH,
    jitter: float = JITTER,
    seed: int = SEED,
    neutral_periods: tuple[int, ...] = NEUTRAL_PERIODS,
) -> np.ndarray:
    """The hole's borrowed detail, float32 [H, W, 3] (zero away from the hole).

    Args:
      low_fill: float [h, w, 3], the low-resolution composite (known pixels and the fill).
      residual: float [H, W, 3], the photo minus the upsampled composite; read only where
        `hole` is False and away from it.
      hole: bool [H, W] at full resolution.
      cell: a cell's side in low-resolution pixels.
      temperature: the softmax's, as a multiple of each hole cell's nearest squared distance.
      top_k: how many of the most similar known cells each hole cell mixes.
      strength: the detail's scale, 1 = the known patches' own variance.
      jitter: how far from the matched cells the patches are read, in half cells.
      seed: of the read offsets.
      neutral_periods: the periods whose local phase offsets are removed (`phase_neutral`;
        () keeps them).
    """
    height, width = hole.shape
    low_h, low_w = low_fill.shape[:2]
    half = max(1, round(cell * max(height / low_h, width / low_w) / 2))
    size = 2 * half  # a cell's side at full resolution; cells start every `half` pixels
    # Cell (i, j) covers [i * half, i * half + size) of the image padded by `half` on each side.
    rows, cols = math.ceil(height / half) + 1, math.ceil(width / half) + 1
    padded_hole = np.zeros(((rows + 1) * half, (cols + 1) * half), bool)
    padded_hole[half : half + height, half : half + width] = hole
    # half x half blocks holding a hole pixel; a cell is the 2x2 blocks from its own.
    blocks = padded_hole.reshape(rows + 1, half, cols + 1, half).any(axis=(1, 3))
    hole_cells = blocks[:-1, :-1] | blocks[1:, :-1] | blocks[:-1, 1:] | blocks[1:, 1:]
    # Known cells: inside the image, with no hole pixel within a half cell (read up to
    # `jitter` half cells away, the patches stay off the hole).
    inside = np.zeros_like(blocks)
    inside[1 : height // half + 1, 1 : width // half + 1] = True
    near = cv2.dilate(blocks.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    bad = near | ~inside
    clean = ~(bad[:-1, :-1] | bad[1:, :-1] | bad[:-1, 1:] | bad[1:, 1:])
    targets = np.flatnonzero(hole_cells.ravel())
    sources = np.flatnonzero(clean.ravel())
    if targets.size == 0 or sources.size == 0:
        return np.zeros((height, width, 3), np.float32)
    if sources.size > MAX_SOURCES:
        sources = sources[:: math.ceil(sources.size / MAX_SOURCES)]

    # Descriptors: the fill over the 3x3 cells around each cell, at half-cell pixels.
    grid = cv2.resize(
        low_fill.astype(np.float32),
        (max(1, round(width / half)), max(1, round(height / half))),
        interpolation=cv2.INTER_AREA,
    ).reshape(max(1, round(height / half)), max(1, round(width / half)), 3)
    before = CONTEXT // 2
    grid = np.pad(
        grid,
        (
            (before, rows + CONTEXT - before - grid.shape[0]),
            (before, cols + CONTEXT - before - grid.shape[1]),
            (0, 0),
        ),
        mode="edge",
    )
    windows = np.lib.stride_tricks.sliding_window_view(grid, (CONTEXT, CONTEXT), axis=(0, 1))
    descriptors = windows[:rows, :cols].reshape(rows * cols, -1)
    nearest, weights = _matches(descriptors[targets], descriptors[sources], temperature, top_k)

    # Each hole cell's patch: its sources' residual at a random offset, weighted and windowed.
    # `count` consecutive offsets: the phases of any period that divides it equally often.
    count = max(1, round(2 * jitter * half))
    reach = count // 2
    margin = half + reach
    padded = np.pad(
        residual.astype(np.float32), ((margin, margin + size), (margin, margin + size), (0, 0))
    )
    offsets = np.random.default_rng(seed).integers(-reach, count - reach, (targets.size, 2, 1))
    top = (sources // cols)[nearest] * half + reach + offsets[:, 0]  # [T, k]
    left = (sources % cols)[nearest] * half + reach + offsets[:, 1]
    span = np.arange(size)
    window = (_window(size)[:, None] * _window(size)[None, :]).astype(np.float32)
    out = np.zeros(((rows + 2) * half, (cols + 2) * half, 3), np.float32)
    target_rows, target_cols = targets // cols, targets % cols
    for first in range(0, targets.size, CHUNK):
        part = slice(first, first + CHUNK)
        patches = padded[
            (top[part, :, None, None] + span[:, None]),
            (left[part, :, None, None] + span[None, :]),
        ]  # [t, k, size, size, 3]
        gain = 1.0 / np.sqrt((weights[part] ** 2).sum(axis=1))  # variance-preserving mix
        mixed = np.einsum("tk,tkyxc->tyxc", weights[part] * gain[:, None], patches)
        mixed *= window[..., None]
        for r, c, patch in zip(target_rows[part], target_cols[part], mixed, strict=True):
            out[r * half : r * half + size, c * half : c * half + size] += patch
    detail = strength * WINDOW_GAIN * out[half : half + height, half : half + width]
    return phase_neutral(detail, hole, neutral_periods)
