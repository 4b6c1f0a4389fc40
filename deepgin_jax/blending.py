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

`BLENDERS` names the ways a fill can meet the photo (the `blend` option of `Inpainter`): each
takes (image [H, W, 3] in its own dtype, hole bool [H, W], fill float [H, W, 3] in [0, 1]) and
returns the float32 fill to paste into the hole. "paste" is the fill as it is; "poisson" is
`poisson_blend`, or the fill as it is with a warning for holes beyond `POISSON_MAX_PIXELS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from absl import logging

from deepgin_jax.image_io import to_unit_float

# The Poisson blend's largest system: its sparse LU grows faster than the hole (a 640x320 hole
# took 0.85 s on 2 idle cores, a 1,144x714 one 9 s on busy ones); larger holes are pasted.
POISSON_MAX_PIXELS = 1_000_000

# Ties every hole pixel weakly to the fill, so that a hole with no known neighbour (the whole
# image) has the fill itself as its unique solution; far below any pixel difference elsewhere.
_ANCHOR = 1e-6

_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def poisson_blend(image: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """image, fill: float [H, W, C]; hole: bool [H, W]. Returns float64 [H, W, C]: `image`
    outside the hole, the Poisson solution (module docstring) inside it."""
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
    # Per neighbour direction: (hole pixels with that neighbour in the hole, the neighbour's
    # index; hole pixels with a known neighbour there, its row and column).
    neighbours: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]
    factors: Any  # scipy.sparse.linalg.SuperLU

    def solve(self, problems: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`_hole_solution(image, hole, fill)` for each (image, fill) of `problems`: float64
        [count, C] each, from this one factorisation."""
        count = self.rows.size
        columns = []
        for image, fill in problems:
            guide = fill[self.rows, self.cols].astype(np.float64)
            rhs = _ANCHOR * guide
            for p_hole, q_hole, p_known, known_rows, known_cols in self.neighbours:
                rhs[p_hole] += guide[p_hole] - guide[q_hole]
                rhs[p_known] += image[known_rows, known_cols].astype(np.float64)
            columns.append(rhs.reshape(count, -1))
        solved = self.factors.solve(np.concatenate(columns, axis=1))
        return np.split(solved, np.cumsum([c.shape[1] for c in columns])[:-1], axis=1)


def hole_system(hole: np.ndarray) -> HoleSystem:
    """The Poisson system of bool [H, W] `hole` (module docstring), factorised: 0.9 s for a
    500x400 ellipse on 2 idle cores, most of a blend's time; the factorisation releases the
    GIL, so it can run in a thread beside other work."""
    rows, cols = np.nonzero(hole)
    count = rows.size
    height, width = hole.shape
    index = np.full(hole.shape, -1, np.int64)
    index[rows, cols] = np.arange(count)
    diagonal = np.full(count, _ANCHOR)
    neighbours, off_rows, off_cols = [], [], []
    for dy, dx in _NEIGHBOURS:
        q_rows, q_cols = rows + dy, cols + dx
        inside = (q_rows >= 0) & (q_rows < height) & (q_cols >= 0) & (q_cols < width)
        p = np.flatnonzero(inside)
        q_rows, q_cols = q_rows[p], q_cols[p]
        diagonal[p] += 1.0
        q_index = index[q_rows, q_cols]
        in_hole = q_index >= 0
        neighbours.append(
            (p[in_hole], q_index[in_hole], p[~in_hole], q_rows[~in_hole], q_cols[~in_hole])
        )
        off_rows.append(p[in_hole])
        off_cols.append(q_index[in_hole])
    off_rows_all = np.concatenate(off_rows)
    matrix = scipy.sparse.csc_matrix(
        (
            np.concatenate([diagonal, -np.ones(off_rows_all.size)]),
            (
                np.concatenate([np.arange(count), off_rows_all]),
                np.concatenate([np.arange(count), *off_cols]),
            ),
        ),
        shape=(count, count),
    )
    # The matrix is symmetric and diagonally dominant: no pivoting, and an ordering of A + A^T's
    # graph (0.85 s against 1.0 s with the defaults for a 640x320 hole, 2 CPU cores).
    factors = scipy.sparse.linalg.splu(
        matrix,
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )
    return HoleSystem(hole.shape, rows, cols, tuple(neighbours), factors)


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
