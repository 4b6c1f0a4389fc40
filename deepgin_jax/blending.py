"""Gradient-domain (Poisson) blending of a fill into its hole: the seam-free composite.

`poisson_blend(image, hole, fill)` returns the image whose hole pixels keep the differences
between neighbouring hole pixels that `fill` has, and meet the known pixels at the hole's border
without a step (Perez et al., "Poisson image editing", 2003; the post-processing of Iizuka et
al., "Globally and locally consistent image completion", 2017). For every hole pixel p and each
of its 4-neighbours q inside the image:

    sum_q (f_p - f_q) = sum_{q in hole} (fill_p - fill_q)        (f_q = image_q if q is known)

so across the border the fill's own difference is dropped and the known neighbour's value is
kept: a colour offset between the network's fill and the photo around it spreads smoothly over
the hole instead of showing as a seam. Per channel it is one sparse symmetric linear system in
the hole's pixels (a 5-point Laplacian), factorised once for the three channels. Known pixels are
never changed.

A hole of up to `TWO_LEVEL_MIN_PIXELS` pixels is solved exactly (SuperLU). A larger one, whose LU
grows faster than the hole (1.1-1.9 s of CPU for an ellipse of 160,000 pixels, 1.8-2.0 s for
254,000, idle cores, with SciPy's default panels; `_factorised`), is solved in two levels: the
solution minus the fill is harmonic, so smooth away from the border. It is solved on a grid
`COARSE_STEP` times coarser, bilinearly interpolated (the coarse system is the fine one's Galerkin
projection, so no boundary is moved), and then solved exactly, at full resolution, in the band of
hole pixels within `BAND_WIDTH` of the border, taking the coarse solution at the band's inner edge.
One more such correction of the residual follows. On those ellipses: 0.30-0.45 s and 0.69-0.78 s to
factorise, within 0.08 of a 0-255 level of the exact solution (`python -m
benchmarks.poisson_solve`).

`BLENDERS` names the ways a fill can meet the photo (the `blend` option of `Inpainter`): each
takes (image [H, W, 3] in its own dtype, hole bool [H, W], fill float [H, W, 3] in [0, 1]) and
returns the float32 fill to paste into the hole. "paste" is the fill as it is; "poisson" is
`poisson_blend`, or the fill as it is with a warning for holes beyond `POISSON_MAX_PIXELS`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from absl import logging

from deepgin_jax.image_io import to_unit_float

if TYPE_CHECKING:
    import scipy.sparse

# SciPy's sparse modules are imported where a system is built, not with this module: 0.16 s
# that `inpaint` spends in the thread that prepares the blend, beside the network.

# The Poisson blend's largest system (a million pixels: 4.9 s of CPU to factorise in two levels
# and 2.7 s to solve, on busy cores); larger holes are pasted.
POISSON_MAX_PIXELS = 1_000_000

# Ties every hole pixel weakly to the fill, so that a hole with no known neighbour (the whole
# image) has the fill itself as its unique solution; far below any pixel difference elsewhere.
_ANCHOR = 1e-6

_NEIGHBOURS = ((-1, 0), (0, -1), (0, 1), (1, 0))

# The two-level solve (module docstring): holes above this many pixels; the coarse grid's step
# and the exactly solved band's width, in pixels; the corrections after the first pass.
TWO_LEVEL_MIN_PIXELS = 50_000
COARSE_STEP = 3
BAND_WIDTH = 16
CORRECTIONS = 1


def poisson_blend(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """image, fill: float [H, W, C]; hole: bool [H, W]. Returns float64 [H, W, C]: `image`
    outside the hole, the Poisson solution (module docstring; for a hole beyond
    `TWO_LEVEL_MIN_PIXELS`, the two-level one) inside it."""
    _check_shapes(image, hole, fill)
    result = image.astype(np.float64)  # a copy
    if hole.any():
        result[hole] = _hole_solution(image, hole, fill)
    return result


def _check_shapes(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> None:
    if image.shape != fill.shape or image.shape[:2] != hole.shape:
        raise ValueError(
            f"image {image.shape}, fill {fill.shape} and hole {hole.shape} must match in H, W"
        )


def _hole_solution(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """The Poisson solution at the hole's pixels (in `np.nonzero(hole)` order): float64
    [count, C]. Only the pixels the system reads are converted to float64, not whole images."""
    return hole_system(hole).solve([(image, fill)])[0]


@dataclasses.dataclass(frozen=True)
class HoleSystem:
    """The factorised system of one hole (`hole_system`): it depends on the hole alone, the
    image and the fill enter only the right-hand side (`HoleSystem.solve`)."""

    shape: tuple[int, int]
    rows: np.ndarray  # the hole's pixels, np.nonzero(hole) order
    cols: np.ndarray
    matrix: scipy.sparse.csr_matrix  # the system: _ANCHOR + neighbours on the diagonal, -1
    known_degree: np.ndarray  # per hole pixel, how many of its neighbours are known
    # Each (hole pixel, known neighbour) pair: the pixel's index, the neighbour's row and column.
    known_pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    solver: _DirectSolver | _TwoLevelSolver

    def solve(self, problems: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`_hole_solution(image, hole, fill)` for each (image, fill) of `problems`: float64
        [count, C] each, from this one factorisation."""
        if len(problems) > 1 and isinstance(self.solver, _TwoLevelSolver):
            # A large hole's problems each in a thread: SciPy's solves and sparse products
            # release the GIL.
            with concurrent.futures.ThreadPoolExecutor(len(problems)) as pool:
                return list(pool.map(lambda problem: self._solve_one(*problem), problems))
        equations = [self._equations(image, fill) for image, fill in problems]
        rhs, guides = (np.concatenate(parts, axis=1) for parts in zip(*equations, strict=True))
        solved = self.solver.solve(rhs, guides)
        return np.split(solved, np.cumsum([g.shape[1] for _, g in equations])[:-1], axis=1)

    def _solve_one(self, image: np.ndarray, fill: np.ndarray) -> np.ndarray:
        return self.solver.solve(*self._equations(image, fill))

    def _equations(self, image: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the right-hand side, the fill at the hole's pixels): float64 [count, C] each.

        The right-hand side, anchor * fill_p + sum over hole neighbours q of (fill_p - fill_q)
        + sum over known neighbours of their values, is the matrix times the fill, less the
        known neighbours' share of the diagonal, plus the known values: one sparse product
        instead of a gather per direction."""
        count = self.rows.size
        pixels, known_rows, known_cols = self.known_pairs
        guide = fill[self.rows, self.cols].astype(np.float64).reshape(count, -1)
        rhs = self.matrix @ guide - self.known_degree[:, None] * guide
        known = image[known_rows, known_cols].astype(np.float64)
        np.add.at(rhs, pixels, known.reshape(pixels.size, guide.shape[1]))
        return rhs, guide


def _superlu_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that makes and frees every SuperLU factorisation. SciPy (up to 1.17 at
    least) records SuperLU's memory in a table of the thread that allocates it and frees it
    only from that thread's table: factors made in a worker thread and dropped in another, or
    after the worker ended, are never freed (scipy/scipy#15921). With the blend factorised in
    a new thread beside the network at every call, the editor grew by about 150 MB per stroke
    set on a 2560x1600 photo. One per process: a forked child does not inherit the thread."""
    return _superlu_thread_of(os.getpid())


@functools.cache
def _superlu_thread_of(process: int) -> concurrent.futures.ThreadPoolExecutor:
    del process
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="superlu")


class _Factors:
    """A SuperLU factorisation made in `_superlu_thread`, and freed there when dropped."""

    def __init__(self, factors: Any) -> None:
        self._factors = factors

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        return self._factors.solve(rhs)

    def __del__(self) -> None:
        # Handed over in a list that the thread empties: its last reference dies there.
        handed = [self.__dict__.pop("_factors", None)]
        with contextlib.suppress(RuntimeError):  # at interpreter exit, with the process
            _superlu_thread().submit(_release, handed)


def _release(handed: list) -> None:
    handed.pop()


def _factorised(matrix: scipy.sparse.spmatrix) -> _Factors:
    """SuperLU of a symmetric, diagonally dominant matrix: no pivoting, and an ordering of
    A + A^T's graph (0.85 s against 1.0 s with the defaults for a 640x320 hole, 2 CPU cores).
    Panels of 2 columns instead of SciPy's default: the same factors, in 0.42 s against
    0.73-0.75 s for the 258,751-pixel band of a stroke set over 23 % of a 2560x1600 photo, 0.26
    against 0.40-0.42 s for its 111,242-node coarse grid, 0.58-0.61 s against 0.71-0.83 s for
    a 164,000-pixel ellipse or box solved exactly (CPU seconds, idle cores). Made in
    `_superlu_thread`; the caller waits for it."""
    import scipy.sparse.linalg

    factorise = functools.partial(
        scipy.sparse.linalg.splu,
        scipy.sparse.csc_matrix(matrix),
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        relax=5,
        panel_size=2,
        options={"SymmetricMode": True},
    )
    return _Factors(_superlu_thread().submit(factorise).result())


@dataclasses.dataclass(frozen=True)
class _DirectSolver:
    """The exact solve: the matrix's LU."""

    factors: _Factors

    def solve(self, rhs: np.ndarray, guess: np.ndarray) -> np.ndarray:
        del guess
        return self.factors.solve(rhs)


@dataclasses.dataclass(frozen=True)
class _TwoLevelSolver:
    """The two-level solve of a large hole (module docstring)."""

    matrix: scipy.sparse.csr_matrix
    prolongation: scipy.sparse.csr_matrix  # bilinear: coarse nodes -> hole pixels
    restriction: scipy.sparse.csr_matrix  # its transpose
    coarse: _Factors  # of restriction @ matrix @ prolongation
    band: np.ndarray  # the indices of the hole pixels solved exactly
    inner: np.ndarray  # and of the others
    band_factors: _Factors  # of the band's block of `matrix`
    band_coupling: scipy.sparse.csr_matrix  # the band's rows, the other pixels' columns

    def solve(self, rhs: np.ndarray, guess: np.ndarray) -> np.ndarray:
        """The solution near `guess` (the fill, whose difference from the solution is smooth
        away from the border)."""
        target = rhs - self.matrix @ guess  # what the correction solves
        correction = np.zeros_like(guess)
        residual = target
        for correcting in range(1 + CORRECTIONS):
            if correcting:
                residual = target - self.matrix @ correction
            correction += self.prolongation @ self.coarse.solve(self.restriction @ residual)
            correction[self.band] = self.band_factors.solve(
                target[self.band] - self.band_coupling @ correction[self.inner]
            )
        return guess + correction


def _bilinear_prolongation(
    rows: np.ndarray, cols: np.ndarray, step: int
) -> scipy.sparse.csr_matrix:
    """[count, nodes]: each pixel (rows, cols) as the bilinear interpolation of the nodes of a
    grid of spacing `step` around it (only the nodes some pixel reads, numbered in grid
    order). Built row by row: a pixel's nodes, top left, top right, bottom left, bottom right,
    are already in column order."""
    import scipy.sparse

    y, x = rows / step, cols / step
    top, left = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    down, right = y - top, x - left
    node_cols = int(left.max()) + 2
    corner = top * node_cols + left
    nodes = np.stack([corner, corner + 1, corner + node_cols, corner + node_cols + 1], axis=1)
    weights = np.stack(
        [(1 - down) * (1 - right), (1 - down) * right, down * (1 - right), down * right], axis=1
    )
    used = weights > 0
    read = np.zeros((int(top.max()) + 2) * node_cols, bool)
    read[nodes[used]] = True
    numbers = np.cumsum(read, dtype=np.int64) - 1
    indptr = np.concatenate([[0], np.cumsum(used.sum(axis=1))])
    return scipy.sparse.csr_matrix(
        (weights[used], numbers[nodes[used]], indptr), shape=(rows.size, int(numbers[-1]) + 1)
    )


def _two_level(matrix: scipy.sparse.csr_matrix, hole: np.ndarray) -> _TwoLevelSolver:
    import scipy.sparse

    rows, cols = np.nonzero(hole)
    prolongation = _bilinear_prolongation(rows, cols, COARSE_STEP)
    restriction = prolongation.T.tocsr()
    # The distance to the nearest known pixel (the image's edge counts as one).
    distance = cv2.distanceTransform(np.pad(hole, 1).astype(np.uint8), cv2.DIST_L2, 3)
    in_band = distance[1:-1, 1:-1][hole] <= BAND_WIDTH
    band, inner = np.flatnonzero(in_band), np.flatnonzero(~in_band)
    band_rows = matrix[band]
    return _TwoLevelSolver(
        matrix=matrix,
        prolongation=prolongation,
        restriction=restriction,
        # Where a few pixels read more nodes than they are (a lone pixel, a thin stroke), the
        # projection is singular; the anchor only picks among nodes whose interpolation at the
        # pixels is the same.
        coarse=_factorised(
            restriction @ matrix @ prolongation
            + _ANCHOR * scipy.sparse.identity(prolongation.shape[1], format="csr")
        ),
        band=band,
        inner=inner,
        band_factors=_factorised(band_rows[:, band]),
        band_coupling=band_rows[:, inner].tocsr(),
    )


def hole_system(hole: np.ndarray, *, two_level: bool | None = None) -> HoleSystem:
    """The Poisson system of bool [H, W] `hole` (module docstring), factorised in two levels
    where `two_level` says (None: beyond `TWO_LEVEL_MIN_PIXELS`); the factorisations release
    the GIL, so they can run in a thread beside other work."""
    import scipy.sparse

    rows, cols = np.nonzero(hole)
    count = rows.size
    # Each pixel's number in the hole, -1 for a known pixel, -2 beyond the image's edges.
    index = np.full((hole.shape[0] + 2, hole.shape[1] + 2), -2, np.int64)
    index[1:-1, 1:-1] = -1
    index[1:-1, 1:-1][hole] = np.arange(count)
    # The 4-neighbours, up, left, right, down: in column order around the pixel itself.
    neighbours = np.stack([index[rows + 1 + dy, cols + 1 + dx] for dy, dx in _NEIGHBOURS], axis=1)
    in_image = neighbours > -2
    is_known = neighbours == -1
    known_degree = is_known.sum(axis=1).astype(np.float64)
    pixels, sides = np.nonzero(is_known)
    offsets = np.array(_NEIGHBOURS)[sides]
    known_pairs = (pixels, rows[pixels] + offsets[:, 0], cols[pixels] + offsets[:, 1])
    # Rows of -1 at the hole neighbours and the degree (plus the anchor) on the diagonal.
    columns = np.insert(neighbours, 2, np.arange(count), axis=1)
    entries = columns >= 0
    values = np.full(columns.shape, -1.0)
    values[:, 2] = _ANCHOR + in_image.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(entries.sum(axis=1))])
    matrix = scipy.sparse.csr_matrix(
        (values[entries], columns[entries], indptr), shape=(count, count)
    )
    matrix.has_sorted_indices = True
    if two_level is None:
        two_level = count > TWO_LEVEL_MIN_PIXELS
    solver = _two_level(matrix, hole) if two_level else _DirectSolver(_factorised(matrix))
    return HoleSystem(hole.shape, rows, cols, matrix, known_degree, known_pairs, solver)


def paste(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """The fill as it is."""
    del image, hole
    return fill


def poisson(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """`poisson_blend` of `fill` into `image` (any pixel dtype), float32 in [0, 1]; `fill` as it
    is, with a warning, for holes beyond `POISSON_MAX_PIXELS`."""
    return _poisson(image, hole, fill, membrane=False)[0]


def poisson_and_membrane(
    image: np.ndarray,
    hole: np.ndarray,
    fill: np.ndarray,
    *,
    membrane: bool = True,
    system: HoleSystem | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(`poisson(image, hole, fill)`, the membrane): the membrane (harmonic) interpolation of
    the hole's border, `poisson_blend(photo, hole, 0)` at the hole's pixels (float64 [count, C],
    photo = `image` in [0, 1]), solved with the blend from the same factorisation; None where
    the fill is pasted (no hole, or one beyond `POISSON_MAX_PIXELS`) and without `membrane`.
    `system`: the hole's `hole_system`, if it was factorised beforehand."""
    return _poisson(image, hole, fill, membrane=membrane, system=system)


def _poisson(
    image: np.ndarray,
    hole: np.ndarray,
    fill: np.ndarray,
    *,
    membrane: bool,
    system: HoleSystem | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    count = int(hole.sum())
    if count > POISSON_MAX_PIXELS:
        logging.warning(
            "The holes cover %d pixels, more than the Poisson blend solves (%d): the fill is "
            "pasted as it is (blend='paste').",
            count,
            POISSON_MAX_PIXELS,
        )
        return fill, None
    if count == 0:
        return fill, None
    photo = to_unit_float(image)
    _check_shapes(photo, hole, fill)
    # As np.clip(poisson_blend(photo, hole, fill), 0, 1) in float32, without float64 copies of
    # the whole box (a fifth of a second for a 1500x1500 one).
    blended = np.clip(photo, 0.0, 1.0).astype(np.float32)
    problems = [(photo, fill)]
    if membrane:
        problems.append((photo, np.broadcast_to(np.zeros((), fill.dtype), fill.shape)))
    if system is None:
        system = hole_system(hole)
    elif system.shape != hole.shape:
        raise ValueError(f"a system of a {system.shape} hole for a {hole.shape} one")
    solutions = system.solve(problems)
    blended[hole] = np.clip(solutions[0], 0.0, 1.0)
    return blended, solutions[1] if membrane else None


# The `blend` option's names and what each does (module docstring).
BLENDERS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "paste": paste,
    "poisson": poisson,
}
BLENDS = tuple(BLENDERS)
