"""The large-image path ("scaled" strategy): each hole filled once, at the scale the network knows.

For a photo larger than the network's input (`max_direct_size`, 256 for the shipped model):

1. `context_boxes`: the holes are grouped (connected components, merged while their boxes
   overlap) and each group gets a square box around it, its hole's bounding box grown
   `factor` (3) times per side, so that the hole is about a third of the box's side as in
   training (holes of 30-70 % of a side), and at least `min_size`; far-apart holes get boxes
   of their own.
2. A box larger than the network's input is area-downscaled (`downscale_known`: the known
   pixels alone, so no hole pixel's value reaches the network; a low-resolution pixel that
   covers any hole pixel is a hole) until its long side is `work_size`, and filled in ONE
   network pass; a box that fits runs at its own size (enlarged by the `upscale` setting).
   A thin hole (brush strokes: narrower than the brushes the network knows once downscaled)
   goes instead, by `stroke_fill`, through overlapping network-sized tiles of the box
   downscaled only as far as its brushes need, their fills blended by smooth weights ("tiles",
   the default), or through the polyphase sub-images of the box's own pixels, the grid their
   independent fills leave removed ("polyphase"; both in `inference.strokes`).
3. The low-resolution composite is upsampled (bicubic) to the box's size; optionally the known
   region's full-resolution detail is brought into the hole (`inference.detail`; for strokes,
   the detail above a coarser scale, at which their fill is smooth); the hole's
   pixels then meet the photo by the `blend` setting (`blending.BLENDERS`, as every planner),
   and with `colour` the fill's mean CIELAB colour is kept within `COLOUR_TOLERANCE` of a
   membrane interpolation of the hole's full-resolution border and within `TELEA_TOLERANCE`
   of OpenCV Telea's fill.

No sub-image grid (one pass, blended tiles, or sub-images de-gridded); the colour limit removes
a colour that the network pulled in from elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable

import cv2
import numpy as np

from deepgin_jax import blending
from deepgin_jax.blending import BLENDERS
from deepgin_jax.image_io import convert_pixels, to_unit_float
from deepgin_jax.inference import detail as detail_transfer
from deepgin_jax.inference import strokes
from deepgin_jax.inference.batching import _Job
from deepgin_jax.inference.geometry import SCALED_FACTOR
from deepgin_jax.inference.planners import _AutoPlanner

# The hole's mean colour may differ from what its surroundings predict by this much (CIELAB;
# 2.3 is a just-noticeable difference); a larger difference is the network's colour cast. Two
# predictions, both from the full-resolution border: a membrane (harmonic) interpolation, the
# closer on average, and OpenCV's Telea fill, a looser bound that catches the membrane's misses
# (a bright object crossing the border that the membrane dilutes; measured on the 54 eval photos).
COLOUR_TOLERANCE = 1.0
TELEA_TOLERANCE = 2.0
TELEA_RADIUS = 3
# A downscaled box's fill gets the known region's detail above 1/DETAIL_FACTOR of its scale,
# its local phase offsets removed (`detail.phase_neutral`): on the 54 eval photos' object holes
# LPIPS 0.291 against 0.304 with 1 and none removed, hole PSNR 17.43 against 17.48 dB, the raw
# grid over 0.25 on 5 holes against 8 (detrended: at most 0.06 against 0.15).
DETAIL_FACTOR = 2
# A hole of more pixels is area-downscaled to about this many for Telea's fill (its cost grows
# with the hole; the mean colour barely depends on the scale), and for the membrane where the
# Poisson blend does not solve it anyway (one more solve with the blend's factorisation, at full
# resolution up to `blending.POISSON_MAX_PIXELS`). Above every hole of the 54-photo benchmark
# (at most 152,562 pixels).
COLOUR_MAX_PIXELS = 160_000

Box = tuple[int, int, int, int]  # (top, left, bottom, right)


def _grown(bounds: np.ndarray, shape: tuple[int, int], factor: float, min_size: int) -> np.ndarray:
    """[n, 4] hole bounding boxes -> [n, 4] square context boxes (cut to the image), centred on
    the hole and shifted inside the image."""
    top, left, bottom, right = bounds.T
    side = np.maximum(
        min_size, np.ceil(np.maximum(bottom - top, right - left) * factor).astype(np.int64)
    )
    out = []
    for start, end, limit in ((top, bottom, shape[0]), (left, right, shape[1])):
        length = np.minimum(side, limit)
        first = np.floor((start + end - length) / 2).astype(np.int64)
        first = np.clip(first, 0, limit - length)
        out.append((first, first + length))
    (t, b), (l, r) = out
    return np.stack([t, l, b, r], axis=1)


def context_boxes(
    hole: np.ndarray, *, factor: float = SCALED_FACTOR, min_size: int = 0
) -> list[tuple[Box, Box]]:
    """(context box, hole bounding box) per group of holes of bool [H, W].

    Groups start as the 8-connected components of the hole; groups whose context boxes
    overlap are merged (their hole boxes joined, the context box grown again) until none do.
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    if count <= 1:
        return []
    x, y, w, h = (stats[1:, i].astype(np.int64) for i in range(4))
    bounds = np.stack([y, x, y + h, x + w], axis=1)
    while True:
        boxes = _grown(bounds, hole.shape, factor, min_size)
        if len(bounds) == 1:
            break
        from scipy.sparse import csgraph, csr_matrix  # on first use, as in `blending`

        t, l, b, r = (boxes[:, i] for i in range(4))
        overlap = (
            (t[:, None] < b[None, :])
            & (t[None, :] < b[:, None])
            & (l[:, None] < r[None, :])
            & (l[None, :] < r[:, None])
        )
        groups, labels = csgraph.connected_components(csr_matrix(overlap), directed=False)
        if groups == len(bounds):
            break
        merged = np.empty((groups, 4), np.int64)
        for g in range(groups):
            members = bounds[labels == g]
            merged[g] = (*members[:, :2].min(axis=0), *members[:, 2:].max(axis=0))
        bounds = merged
    return [
        (tuple(int(v) for v in box), tuple(int(v) for v in bound))
        for box, bound in zip(boxes, bounds, strict=True)
    ]


def downscale_known(
    rgb: np.ndarray, hole: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """rgb [H, W, 3] and bool hole [H, W] area-downscaled to `size` = (h, w): the pixels as the
    area mean of the known pixels alone (up(rgb * known) / up(known)), the hole wherever any
    hole pixel falls. Returns (float32 [h, w, 3] in [0, 1] with white holes, bool [h, w])."""
    height, width = size
    known = (~hole).astype(np.float32)
    weighted = to_unit_float(rgb).astype(np.float32, copy=False)  # new: scaled in place
    weighted *= known[..., None]
    numerator = cv2.resize(weighted, (width, height), interpolation=cv2.INTER_AREA)
    denominator = cv2.resize(known, (width, height), interpolation=cv2.INTER_AREA)
    low_hole = denominator < 1.0 - 1e-4
    low = numerator.reshape(height, width, 3) / np.maximum(denominator, 1e-6)[..., None]
    low = np.where(low_hole[..., None], np.float32(1.0), np.clip(low, 0.0, 1.0))
    return low.astype(np.float32), low_hole


def upsample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [h, w, 3] -> float32 [H, W, 3] (bicubic, clipped to [0, 1])."""
    height, width = size
    big = cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(big.reshape(height, width, 3), 0.0, 1.0)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """float RGB [N, 3] in [0, 1] (clipped) -> float32 CIELAB [N, 3]; only the pixels asked
    for are converted (a hole is a tenth of its box)."""
    pixels = np.clip(rgb, 0.0, 1.0).astype(np.float32).reshape(-1, 1, 3)
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB).reshape(-1, 3)


def _mean_lab(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The mean CIELAB colour over the hole of float RGB [H, W, 3] in [0, 1]."""
    return _lab(rgb[hole]).mean(axis=0)


def membrane_colour(
    photo: np.ndarray, hole: np.ndarray, system: blending.HoleSystem | None = None
) -> np.ndarray:
    """The mean CIELAB colour over the hole of the membrane (harmonic) interpolation of the
    hole's border in `photo` (float [H, W, 3] in [0, 1]): the colour the surroundings predict.
    At full resolution: a downscaled hole's border lies a pixel further out, which moves the
    prediction towards whatever edge runs along the hole (3 L units on a sunset's treeline).
    `system`: the hole's `blending.hole_system`, if it is factorised already (the blend's)."""
    known = np.clip(photo, 0.0, 1.0).astype(np.float32)
    if system is None:
        system = blending.hole_system(hole)
    border_only = np.broadcast_to(np.zeros((), np.float32), known.shape)
    return _lab(system.solve([(known, border_only)])[0]).mean(axis=0)


def _hole_window(hole: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of the (non-empty) hole grown by `margin` pixels, cut to the image."""
    rows, cols = np.nonzero(hole.any(axis=1))[0], np.nonzero(hole.any(axis=0))[0]
    return (
        slice(max(0, rows[0] - margin), rows[-1] + 1 + margin),
        slice(max(0, cols[0] - margin), cols[-1] + 1 + margin),
    )


def telea_colour(photo: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The mean CIELAB colour over the hole of OpenCV's Telea fill of `photo` (float [H, W, 3]
    in [0, 1]). Telea reads the known pixels within its radius of the hole: the fill is made in
    the hole's bounding box grown by a margin, not in the whole box (the same pixels, a tenth of
    the time)."""
    if not hole.any():
        return _mean_lab(photo, hole)
    window = _hole_window(hole, TELEA_RADIUS + 2)
    pixels = np.round(np.clip(photo[window], 0.0, 1.0) * 255.0).astype(np.uint8)
    part = hole[window]
    filled = cv2.inpaint(pixels, part.astype(np.uint8), TELEA_RADIUS, cv2.INPAINT_TELEA)
    return _mean_lab(filled.astype(np.float32) / 255.0, part)


def colour_limited(
    fill: np.ndarray, hole: np.ndarray, target: np.ndarray, tolerance: float = COLOUR_TOLERANCE
) -> np.ndarray:
    """`fill` (float32 [H, W, 3] in [0, 1]) whose mean CIELAB colour over the hole is moved to
    within `tolerance` of `target`, by a correction that is zero at the hole's border and flat
    a short way in (so a blended fill keeps meeting the photo without a seam): a colour the
    network took from elsewhere (green from a lawn into a sky) is removed, its shading and
    structure kept."""
    lab = _lab(fill[hole])
    difference = lab.mean(axis=0) - target
    distance = float(np.linalg.norm(difference))
    if distance <= tolerance:
        return fill
    # The distance to the nearest known pixel or edge: within the hole's bounding box.
    part = hole[_hole_window(hole, 0)]
    inside = cv2.distanceTransform(np.pad(part, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    ramp = np.minimum(inside / max(1.0, 0.25 * float(inside.max())), 1.0)[part]
    shift = -difference * (1.0 - tolerance / distance)
    lab += ramp[:, None] * (shift / ramp.mean())[None, :]
    corrected = cv2.cvtColor(lab.reshape(-1, 1, 3), cv2.COLOR_LAB2RGB).reshape(-1, 3)
    result = fill.copy()
    result[hole] = np.clip(corrected, 0.0, 1.0)
    return result


def _at_most(photo: np.ndarray, hole: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(photo, hole), area-downscaled (`downscale_known`) when the hole has more than `pixels`
    pixels, to about that many."""
    count = int(hole.sum())
    if count <= pixels:
        return photo, hole
    scale = float(np.sqrt(pixels / count))
    size = (max(1, round(hole.shape[0] * scale)), max(1, round(hole.shape[1] * scale)))
    return downscale_known(photo, hole, size)


@dataclasses.dataclass(frozen=True)
class BoxPreparation:
    """What a box's finish needs from its photo and hole alone, so that it can be made while
    the network runs (`prepare_box`): the Poisson blend's factorised system (None when the fill
    is not Poisson-blended) and, with the colour limit, its two targets (`colour_targets`)."""

    system: blending.HoleSystem | None = None
    membrane: np.ndarray | None = None
    telea: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PendingPreparation:
    """A box's `BoxPreparation` being made in threads (`ScaledPlanner`): functions that wait
    for each part. The finish waits for the system when it blends and for the colour targets
    only after that, so that the blend's solve runs while the membrane's may still be made."""

    system: Callable[[], blending.HoleSystem | None]
    targets: Callable[[], tuple[np.ndarray | None, np.ndarray | None]]

    @classmethod
    def made(cls, preparation: BoxPreparation) -> PendingPreparation:
        """The parts of a preparation made already."""
        return cls(lambda: preparation.system, lambda: (preparation.membrane, preparation.telea))


def _blend_solves(hole: np.ndarray, blend: str) -> bool:
    return blend == "poisson" and 0 < int(hole.sum()) <= blending.POISSON_MAX_PIXELS


def prepare_system(hole: np.ndarray, blend: str) -> blending.HoleSystem | None:
    """The Poisson blend's `blending.hole_system` for `hole`, or None without a solve."""
    return blending.hole_system(hole) if _blend_solves(hole, blend) else None


def colour_targets(
    rgb: np.ndarray,
    hole: np.ndarray,
    blend: str,
    system: Callable[[], blending.HoleSystem | None] = lambda: None,
) -> tuple[np.ndarray, np.ndarray]:
    """The colour limit's (membrane, Telea) targets from the hole's border. Telea's fill, and
    the membrane where no Poisson blend solves the hole, from a downscaled copy beyond
    `COLOUR_MAX_PIXELS`; where one does, the membrane at full resolution from the blend's
    system, `system()`, waited for once Telea's fill is made (so that, in a thread beside the
    network, the solve is not left for the finish)."""
    photo = to_unit_float(rgb).astype(np.float32, copy=False)
    border_photo, border_hole = _at_most(photo, hole, COLOUR_MAX_PIXELS)
    telea = telea_colour(border_photo, border_hole)
    if _blend_solves(hole, blend):
        return membrane_colour(photo, hole, system()), telea
    return membrane_colour(border_photo, border_hole), telea


def prepare_box(rgb: np.ndarray, hole: np.ndarray, *, blend: str, colour: bool) -> BoxPreparation:
    """`BoxPreparation` of one box, made here and now."""
    system = prepare_system(hole, blend)
    membrane, telea = colour_targets(rgb, hole, blend, lambda: system) if colour else (None, None)
    return BoxPreparation(system, membrane, telea)


def finish_fill(
    rgb: np.ndarray,
    hole: np.ndarray,
    low_filled: np.ndarray,
    *,
    detail: bool,
    blend: str,
    colour: bool = False,
    smooth_factors: tuple[int, int] = (1, 1),
    neutral_periods: tuple[int, ...] = (),
    prepared: BoxPreparation | PendingPreparation | None = None,
) -> np.ndarray:
    """The full-resolution fill of one box: float32 [H, W, 3] in [0, 1], equal to the photo
    outside the hole. rgb [H, W, 3] (any pixel dtype), hole bool [H, W], low_filled float
    [h, w, 3] (the composite at the scale it was filled in). `smooth_factors` (Fh, Fw): the
    fill is smooth only at 1/Fh x 1/Fw of low_filled's scale (a polyphase fill of Fh x Fw
    sub-images), which sets the scale the detail is taken above; `neutral_periods`: the
    periods whose local phase offsets the detail loses (`detail.phase_neutral`). `prepared`:
    the box's `prepare_box`, if it was made beforehand, or its parts being made in threads
    (each waited for only once needed: the fill and its detail are made in the meantime)."""
    photo = to_unit_float(rgb).astype(np.float32, copy=False)
    fill = upsample(low_filled, hole.shape)
    if detail:
        coarse = low_filled
        if smooth_factors != (1, 1):
            fh, fw = smooth_factors
            size = (max(1, low_filled.shape[1] // fw), max(1, low_filled.shape[0] // fh))
            coarse = cv2.resize(low_filled.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        smooth = upsample(coarse, hole.shape)
        fill += detail_transfer.transfer_detail(
            coarse, photo - smooth, hole, neutral_periods=neutral_periods
        )
    fill = np.clip(fill, 0.0, 1.0)
    if prepared is None:
        prepared = prepare_box(rgb, hole, blend=blend, colour=colour)
    if isinstance(prepared, BoxPreparation):
        prepared = PendingPreparation.made(prepared)
    if blend == "poisson":
        # The system the membrane target is solved with: one factorisation for both.
        fill = blending.poisson_and_membrane(
            photo, hole, fill, membrane=False, system=prepared.system()
        )[0]
    else:
        fill = BLENDERS[blend](photo, hole, fill)
    if not colour:
        return np.where(hole[..., None], fill, photo)
    membrane, telea = prepared.targets()
    fill = colour_limited(fill, hole, membrane)
    fill = colour_limited(fill, hole, telea, TELEA_TOLERANCE)
    return np.where(hole[..., None], fill, photo)


def _pasted(rgb: np.ndarray, hole: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """`rgb` with its hole pixels from float `fill`, in rgb's dtype."""
    result = rgb.copy()
    result[hole] = convert_pixels(fill[hole], rgb.dtype)
    return result


@dataclasses.dataclass(frozen=True)
class ScaledPlanner:
    """The "scaled" strategy around an "auto" planner (`inner`, which runs an image of at most
    `max_direct_size` in one piece, enlarged by its `upscale`): a photo of at most
    `max_direct_size` goes to `inner` whole; a larger one is filled box by box (module
    docstring)."""

    inner: _AutoPlanner
    max_direct_size: int
    work_size: int
    factor: float = SCALED_FACTOR
    min_size: int = 0
    blend: str = "paste"
    detail: bool = True
    colour: bool = False
    strokes: bool = True
    stroke_fill: str = "tiles"  # a thin hole's path: "tiles" or "polyphase" (`STROKE_FILLS`)

    @property
    def prepare(self) -> Callable[..., np.ndarray]:
        return self.inner.prepare

    def boxes(self, hole: np.ndarray) -> list[tuple[Box, Box]]:
        """`context_boxes` with this planner's settings."""
        return context_boxes(hole, factor=self.factor, min_size=self.min_size)

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        if max(hole.shape) <= self.max_direct_size:
            return self.inner.plan(rgb, hole)
        parts = []
        # Each box's blend factorisation and colour targets depend on its photo and hole alone:
        # made in threads while the network runs (SuperLU and OpenCV release the GIL). The
        # threads end with their work; `shutdown` does not wait for it.
        preparing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="box")
        for (top, left, bottom, right), _ in self.boxes(hole):
            window = (slice(top, bottom), slice(left, right))
            parts.append((window, self._plan_box(rgb[window], hole[window], preparing)))
        preparing.shutdown(wait=False)
        items = [item for _, (job, _) in parts for item in job.items]

        def finish() -> tuple[np.ndarray, np.ndarray]:
            result = rgb.copy()
            for window, (_, finish_box) in parts:
                result[window] = finish_box()
            return result, hole

        return _Job(items, finish)

    def _plan_box(
        self, rgb: np.ndarray, hole: np.ndarray, preparing: concurrent.futures.Executor
    ) -> tuple[_Job, Callable]:
        """(inner job, finish() -> the box's result in rgb's dtype). A box that fits the
        network runs at its own size (the inner planner enlarges it by its `upscale`); a larger
        one is downscaled to `work_size` and filled in one pass, or, for a hole that this would
        narrow below the brushes the network knows (`strokes`), split into polyphase
        sub-images and de-gridded."""
        height, width = hole.shape
        scale = min(1.0, self.work_size / max(height, width))
        thin = scale < 1.0 and self.strokes and strokes.is_thin(hole, scale, self.work_size)
        if thin and self.stroke_fill == "tiles":
            return self._plan_tiles(rgb, hole, preparing)
        if thin:
            scale = strokes.subimage_scale(hole.shape, self.inner.tile_size)
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            low, low_hole = downscale_known(rgb, hole, size)
        else:
            low, low_hole = to_unit_float(rgb).astype(np.float32, copy=False), hole
        job = dataclasses.replace(self.inner, blend="paste").plan(low, low_hole)
        prepared = self._prepare(rgb, hole, preparing)
        tile = self.inner.tile_size
        factors = (-(-low_hole.shape[0] // tile), -(-low_hole.shape[1] // tile))

        def finish() -> np.ndarray:
            low_filled, _ = job.finish()
            if thin:
                low_filled = strokes.degrid(low_filled, low_hole, factors)
            fill = finish_fill(
                rgb,
                hole,
                low_filled,
                detail=self.detail and (scale < 1.0 or factors != (1, 1)),
                smooth_factors=factors if thin else (DETAIL_FACTOR, DETAIL_FACTOR),
                neutral_periods=() if thin else detail_transfer.NEUTRAL_PERIODS,
                blend=self.blend,
                colour=self.colour,
                prepared=prepared,
            )
            return _pasted(rgb, hole, fill)

        return job, finish

    def _prepare(
        self, rgb: np.ndarray, hole: np.ndarray, preparing: concurrent.futures.Executor
    ) -> PendingPreparation:
        """The box's `BoxPreparation`, made by `preparing`'s threads."""
        box_hole = hole.copy()
        system = preparing.submit(prepare_system, box_hole, self.blend)
        if not self.colour:
            return PendingPreparation(system.result, lambda: (None, None))
        targets = preparing.submit(colour_targets, rgb.copy(), box_hole, self.blend, system.result)
        return PendingPreparation(system.result, targets.result)

    def _plan_tiles(
        self, rgb: np.ndarray, hole: np.ndarray, preparing: concurrent.futures.Executor
    ) -> tuple[_Job, Callable]:
        """`_plan_box` for a thin hole: the box area-downscaled to `strokes.tile_scale`, its
        overlapping network-sized tiles that hold hole pixels filled (one work item each, all
        batched together) and blended (`strokes.blend_tiles`); the detail is taken above
        `strokes.TILE_DETAIL_FACTOR` times the tiles' scale."""
        height, width = hole.shape
        scale = strokes.tile_scale(hole, self.work_size)
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            low, low_hole = downscale_known(rgb, hole, size)
        else:
            low, low_hole = to_unit_float(rgb).astype(np.float32, copy=False), hole
        inner = dataclasses.replace(self.inner, blend="paste")
        windows = strokes.tile_windows(
            low_hole.shape, self.inner.tile_size, strokes.TILE_STRIDE_FRACTION
        )
        windows = [window for window in windows if low_hole[window].any()]
        jobs = [inner.plan(low[window], low_hole[window]) for window in windows]
        prepared = self._prepare(rgb, hole, preparing)

        def finish() -> np.ndarray:
            fills = [job.finish()[0] for job in jobs]
            blended = strokes.blend_tiles(fills, windows, low_hole.shape)
            low_filled = np.where(low_hole[..., None], blended, low)
            fill = finish_fill(
                rgb,
                hole,
                low_filled,
                detail=self.detail,
                smooth_factors=(strokes.TILE_DETAIL_FACTOR,) * 2,
                neutral_periods=detail_transfer.NEUTRAL_PERIODS,
                blend=self.blend,
                colour=self.colour,
                prepared=prepared,
            )
            return _pasted(rgb, hole, fill)

        return _Job([item for job in jobs for item in job.items], finish), finish
