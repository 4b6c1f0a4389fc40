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


def _strided_box_sums(values: np.ndarray, period: int, radius: int) -> np.ndarray:
    """float32 [H, W, C] (H and W multiples of `period`) -> at each pixel, the sum over the
    pixels of its own polyphase phase (the same row and column modulo `period`) in the
    (2 radius + 1) x (2 radius + 1) blocks of `period` pixels around its block, cut at the
    edges. Two sums over blocks, one per axis, in the array's own layout: the rows as
    [H / period, period x W x C] (a block row per image row), the columns as an image of
    W / period pixels of period x C channels. OpenCV's correlation with a kernel of ones sums
    in float32, in 2.4 times less time than its box filter, which sums in float64 (23 against
    56 ms for a 2560x1600 RGB image, two cores)."""
    height, width, depth = values.shape
    size = 2 * radius + 1
    flat = values.reshape(height // period, period * width * depth)
    rows = cv2.filter2D(flat, -1, np.ones((size, 1), np.float32), borderType=cv2.BORDER_CONSTANT)
    by_block = rows.reshape(height, width // period, period * depth)
    sums = cv2.filter2D(
        by_block, -1, np.ones((1, size), np.float32), borderType=cv2.BORDER_CONSTANT
    )
    return sums.reshape(height, width, depth)


def _block_window_sums(values: np.ndarray, radius: int) -> np.ndarray:
    """float32 [h, w, C] -> the sums over the (2 radius + 1)^2 windows around each position,
    cut at the edges."""
    size = 2 * radius + 1
    sums = cv2.boxFilter(values, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return sums.reshape(values.shape)


def phase_neutral(
    detail: np.ndarray,
    hole: np.ndarray,
    periods: tuple[int, ...] = NEUTRAL_PERIODS,
    radius: int = NEUTRAL_RADIUS,
) -> np.ndarray:
    """float [H, W, C] `detail` whose hole pixels of each polyphase phase (pixel (y, x) of the
    box around the hole is in phase (y % P, x % P)) lose that phase's local offset: the mean of
    the phase's hole pixels over the (2 radius + 1) P square around them minus the mean of all
    the hole pixels there, for each period P of `periods` in turn. Where the detail is flat
    there is no offset; away from the hole nothing changes. Computed in float32."""
    result = np.array(detail, np.float32)
    _neutralise(result, hole, periods, radius)
    return result


def _padded(values: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """float32 [H, W] or [H, W, C] -> [H + bottom, W + right, C], zeros in the new pixels."""
    if bottom or right:
        values = cv2.copyMakeBorder(values, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=0)
    return values.reshape(*values.shape[:2], -1)


def _neutralise(
    detail: np.ndarray, hole: np.ndarray, periods: tuple[int, ...], radius: int
) -> None:
    """`phase_neutral` in place on float32 `detail` (1 to 4 channels). OpenCV's element-wise
    operations where they are faster than NumPy's (they use both cores)."""
    rows, cols = np.nonzero(hole)
    if rows.size == 0 or not periods:
        return
    channels = detail.shape[2]
    margin = radius * max(periods)
    top, left = max(0, rows.min() - margin), max(0, cols.min() - margin)
    bottom = min(hole.shape[0], rows.max() + 1 + margin)
    right = min(hole.shape[1], cols.max() + 1 + margin)
    box_h, box_w = bottom - top, right - left
    inside = hole[top:bottom, left:right].astype(np.float32)
    inside_channels = cv2.merge([inside] * channels).reshape(box_h, box_w, channels)
    channel_mean = np.full((1, channels), 1.0 / channels, np.float32)
    box = detail[top:bottom, left:right]  # a view: each period corrects it in place
    for period in periods:
        pad_h, pad_w = -box_h % period, -box_w % period
        grid_h, grid_w = (box_h + pad_h) // period, (box_w + pad_w) // period
        values = _padded(cv2.multiply(box, inside_channels), pad_h, pad_w)
        weight = _padded(inside, pad_h, pad_w)
        # Each phase's local mean, then the mean of all phases over the same blocks.
        offsets = _strided_box_sums(values, period, radius)
        offsets /= np.maximum(_strided_box_sums(weight, period, radius), 1e-9)
        block_totals = cv2.resize(values, (grid_w, grid_h), interpolation=cv2.INTER_AREA)
        block_counts = cv2.resize(weight, (grid_w, grid_h), interpolation=cv2.INTER_AREA)
        means = _block_window_sums(block_totals.reshape(grid_h, grid_w, channels), radius)
        means /= np.maximum(
            _block_window_sums(block_counts.reshape(grid_h, grid_w, 1), radius), 1e-9 / period**2
        )
        size = (grid_w * period, grid_h * period)
        offsets -= cv2.resize(means, size, interpolation=cv2.INTER_NEAREST).reshape(offsets.shape)
        # Only the hole's pixels, and only as much as the pixel's own period carries: a flat
        # part beside a textured one (whose offsets the window sees) is left flat.
        energy = cv2.multiply(cv2.transform(cv2.multiply(box, box), channel_mean), inside)
        near = cv2.blur(energy, (period, period))
        wide = cv2.blur(energy, (2 * radius * period + 1,) * 2)
        share = near
        share /= np.maximum(wide, 1e-12)
        np.clip(share, 0.0, 1.0, out=share)
        np.sqrt(share, out=share)
        share *= inside
        correction = offsets[:box_h, :box_w]
        correction *= share[..., None]
        box -= correction


def _overlap_add(
    source: np.ndarray,
    tops: np.ndarray,
    lefts: np.ndarray,
    gains: np.ndarray,
    corners: np.ndarray,
    size: int,
    shape: tuple[int, int],
) -> np.ndarray:
    """float32 [*shape, C]: for each cell t, the `size` x `size` patches of `source` [.., .., C]
    at (tops[t, j], lefts[t, j]) mixed by gains[t, j], windowed (`_window` on both axes) and
    added at corners[t] = (row, column).

    One cell at a time, by slices: a gather of every patch's pixels at once took 4 times as
    long (83-127 ms against 23 ms of CPU for 379 cells of 3 patches of 46 x 46 pixels)."""
    window = (_window(size)[:, None, None] * _window(size)[None, :, None]).astype(np.float32)
    out = np.zeros((*shape, source.shape[2]), np.float32)
    for (row, col), cell_tops, cell_lefts, cell_gains in zip(
        corners, tops, lefts, gains, strict=True
    ):
        patch = sum(
            gain * source[y : y + size, x : x + size]
            for y, x, gain in zip(cell_tops, cell_lefts, cell_gains, strict=True)
        )
        out[row : row + size, col : col + size] += patch * window
    return out


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
    gains = weights / np.sqrt((weights**2).sum(axis=1, keepdims=True))  # variance-preserving
    corners = np.stack([targets // cols, targets % cols], axis=1) * half
    out = _overlap_add(
        padded, top, left, gains, corners, size, ((rows + 2) * half, (cols + 2) * half)
    )
    detail = out[half : half + height, half : half + width]
    detail *= strength * WINDOW_GAIN
    _neutralise(detail, hole, neutral_periods, NEUTRAL_RADIUS)
    return detail
