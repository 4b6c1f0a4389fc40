"""The inpainters: `InpainterBase` (the call shape every method shares), `Inpainter` (DeepGIN)
and `WholeImageInpainter` (methods without a network: the classical baselines in
`deepgin_jax.baselines`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from deepgin_jax import image_io
from deepgin_jax.image_io import to_unit_float
from deepgin_jax.inference import buckets
from deepgin_jax.inference.batching import (
    ProgressFn,
    _batch_plan,
    _Job,
    _no_progress,
    _WorkItem,
    pads_batches,
)
from deepgin_jax.inference.geometry import (
    ENSEMBLE_TRANSFORMS,
)
from deepgin_jax.inference.network import ForwardFn, GeneratorForward
from deepgin_jax.inference.options import (
    SCALED_STRATEGIES,
    InpaintOptions,
    MaskOptions,
    check_options,
)
from deepgin_jax.inference.planners import (
    _AutoPlanner,
    _CropPlanner,
    _Planner,
    _ReferencePlanner,
    _WholeImagePlanner,
)
from deepgin_jax.inference.scaled import ScaledPlanner

if TYPE_CHECKING:
    from deepgin_jax.models.generator import DeepGIN


class InpainterBase:
    """The call shape every inpainting method shares (the DeepGIN `Inpainter` and the classical
    baselines): the caller's images become RGB (`image_io.as_rgb`), the planner prepares each
    mask and plans each image, `_run` runs the work items of all images together, and the
    results go back to the caller's types. An empty mask returns a copy of the image."""

    def __init__(self, planner: _Planner | ScaledPlanner, options: InpaintOptions | None = None):
        self._planner = planner
        self.options = InpaintOptions() if options is None else options

    def inpaint(
        self,
        image: Any,
        mask: Any,
        *,
        invert_mask: bool = False,
        threshold: int | None = None,
        dilate: int = 0,
        resize_mask: bool = False,
        progress: ProgressFn | None = None,
    ) -> Any:
        """Fills the holes of one image.

        Args:
          image: np.ndarray [H, W] / [H, W, 1|2|3|4] (gray, gray + alpha, RGB, RGBA) of uint8,
            uint16 or float in [0, 1], or a PIL image of any mode; any size from 1x1. Float
            pixels inside the hole may be NaN or infinite (they are replaced), not outside.
          mask: np.ndarray (bool / uint8 / uint16 / float; [H, W] or [H, W, 1|2|3|4]) or a PIL
            image; white / 255 / 1.0 / True = hole (`image_io.mask_values`).
          invert_mask: the mask marks the known region instead.
          threshold: a value above it (0-255 scale) is a hole; None = 127. "auto" mode only:
            "reference" mode binarises at > 0 after its resize, like the reference, and
            raises ValueError for any other threshold.
          dilate: grow the hole by a disc of this radius in pixels, 0 to `MAX_DILATE` (1024)
            (in "reference" mode a grey dilation of the soft mask).
          resize_mask: resize a mask of another size to the image (nearest neighbour) instead
            of raising `MaskSizeError`.
          progress: called as progress(done, total) after each batch of network inputs
            (sub-images, ensemble variants) has gone through the network: `done` of `total`
            inputs are done (a progress bar's unit of work). Methods without a network (the
            baselines) do not call it.

        Returns:
          The same type, shape and dtype (PIL: mode; a palette image as RGB(A), see
          `image_io.as_rgb`) as `image`, alpha and PIL metadata kept. An empty mask returns a
          copy of `image` without running the network.

        Raises:
          MaskSizeError: the mask's size differs and `resize_mask` is off.
          ValueError / TypeError: an unsupported shape, dtype or option (`check_options`),
            float pixels outside [0, 1] (e.g. 0-255: divide by 255), or non-finite pixels
            outside the hole (the message counts them and gives the first one's position).
        """
        [result] = self.inpaint_many(
            [image],
            [mask],
            invert_mask=invert_mask,
            threshold=threshold,
            dilate=dilate,
            resize_mask=resize_mask,
            progress=progress,
        )
        return result

    def inpaint_many(
        self,
        images: Sequence[Any],
        masks: Sequence[Any],
        *,
        invert_mask: bool = False,
        threshold: int | None = None,
        dilate: int = 0,
        resize_mask: bool = False,
        progress: ProgressFn | None = None,
    ) -> list[Any]:
        """`inpaint` for several images at once; their network inputs share batches (and
        `progress` counts them all together)."""
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        options = MaskOptions(invert_mask, threshold, dilate, resize_mask)
        check_options(self.options, options)
        views = [image_io.as_rgb(image) for image in images]
        jobs = [self._job(view.rgb, mask, options) for view, mask in zip(views, masks, strict=True)]
        self._run([item for job in jobs for item in job.items], progress or _no_progress)
        results = []
        for image, view, job in zip(images, views, jobs, strict=True):
            rgb, changed = job.finish()
            results.append(view.restore(rgb, changed) if changed.any() else image.copy())
        return results

    def _job(self, rgb: np.ndarray, mask: Any, options: MaskOptions) -> _Job:
        """The plan for RGB [H, W, 3] and its mask; nothing to run for an empty hole."""
        prepared = self._planner.prepare(mask, rgb.shape[:2], options)
        hole = prepared > 0
        if not hole.any():
            return _Job([], lambda: (rgb, hole))
        if hole.all():
            logging.warning(
                "The mask covers the whole %dx%d image: nothing is known, the result is the "
                "method's guess (a baseline's: flat grey).",
                hole.shape[1],
                hole.shape[0],
            )
        return self._planner.plan(_finite_known(rgb, hole), prepared)

    def _run(self, items: list[_WorkItem], progress: ProgressFn) -> None:
        if items:
            raise NotImplementedError(f"{type(self).__name__} runs no network")


class WholeImageInpainter(InpainterBase):
    """A method that fills a whole image in one call, without a network batch (the classical
    baselines): subclasses implement `fill`."""

    def __init__(self) -> None:
        super().__init__(_WholeImagePlanner(self.fill))

    def fill(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """rgb uint8 [H, W, 3], hole bool [H, W] -> the filled image, uint8 [H, W, 3]."""
        raise NotImplementedError


class Inpainter(InpainterBase):
    """Inpaints images of any size with a DeepGIN generator (see `deepgin_jax.inference`).

    `Inpainter()` (or `Inpainter.default()`) uses the model shipped with the package
    (`deepgin_jax.shipped`); `from_checkpoint` and `from_model` build one around another
    generator; the constructor also takes any network function with the generator's signature
    (an exported model, a stand-in network).

    Args:
      forward: forward(masked [B, H, W, 3] float32 in [0, 1], holes white; mask [B, H, W, 1]
        float32, 1 = hole) -> the reconstruction [B, H, W, 3] (array-like). A path (or a name)
        is read as `from_checkpoint` reads it; None (the default) loads the shipped model.
      options: an `InpaintOptions` (default: its defaults).
      dtype: with a path (or None) only: the computation dtype (default float32).
      **fields: `InpaintOptions` fields that replace those of `options` (mode, strategy,
        ensemble, max_batch, tile_size, max_direct_size, crop_factor, crop_min_size,
        crop_max_fraction, upscale, blend, detail, colour_match, scaled_size, stroke_fill,
        buckets, parallel_calls);
        None-valued `upscale` and `blend` take the network's `recommended` settings (the
        shipped model's card: upscale 2 and "poisson" for DeepGIN-compact), else
        `options.PLAIN_SETTINGS` (1 and "paste"); None-valued `buckets` are the default
        buckets for the generator, none (exact shapes) for a network function.

    Raises:
      ValueError: an invalid option, or one that does not fit the mode
        (`options.check_options`), before any network is loaded.
    """

    def __init__(
        self,
        forward: ForwardFn | str | os.PathLike | None = None,
        *,
        options: InpaintOptions | None = None,
        dtype: Any = None,
        **fields: Any,
    ):
        options = _checked(options, fields)
        if forward is None or isinstance(forward, (str, os.PathLike)):
            forward = GeneratorForward.from_checkpoint(forward, dtype=dtype or jnp.float32)
        elif dtype is not None:
            raise TypeError("dtype applies to a checkpoint; use from_model(..., dtype=...)")
        # Only the jitted generator compiles per shape, so only it is padded to buckets.
        compiled = isinstance(forward, GeneratorForward)
        options = options.resolved(getattr(forward, "recommended", {}), compiled=compiled)
        self._forward = forward
        self.mode = options.mode
        self.strategy = options.strategy
        self.ensemble = options.ensemble
        self.max_batch = options.max_batch
        self.tile_size = options.tile_size
        self.max_direct_size = options.max_direct_size
        self.upscale = options.upscale
        self.blend = options.blend
        self.detail = options.detail
        self.buckets = options.buckets
        self.parallel_calls = options.parallel_calls
        self.batch_shapes: set[tuple[int, int, int]] = set()  # (B, H, W) sent to the network
        super().__init__(_planner(options), options)

    @property
    def model(self) -> DeepGIN | None:
        """The DeepGIN behind this Inpainter, None for a plain network function."""
        return getattr(self._forward, "model", None)

    def crop_box(self, hole: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right) of the region the network sees for bool [H, W] `hole`
        (the prepared mask) under this Inpainter's strategy, or None for the whole image (for
        "scaled", the union of the holes' boxes)."""
        if isinstance(self._planner, ScaledPlanner) and max(hole.shape) > self.max_direct_size:
            boxes = np.array([box for box, _ in self._planner.boxes(hole)]).reshape(-1, 4)
            if boxes.size == 0:
                return None
            return (*map(int, boxes[:, :2].min(axis=0)), *map(int, boxes[:, 2:].max(axis=0)))
        if not isinstance(self._planner, _CropPlanner) or not hole.any():
            return None
        return self._planner.box(hole)

    def warm_up(self, progress: ProgressFn | None = None) -> None:
        """Compiles the network for every input shape this Inpainter can use (each square
        bucket side in `buckets` at every padded batch size up to `max_batch`), so that later
        calls compile nothing; `progress(done, total)` after each shape. Safe to call from a
        background thread while the main thread does other work."""
        shapes = [
            (batch, side, side)
            for side in self.buckets
            for batch in buckets.batch_sizes(self.max_batch)
        ]
        # One at a time: XLA's compiler keeps both of 2 cores busy already (a cold warm-up of
        # the shipped model took 128 s of wall time either way, 2 at a time 12 % more CPU).
        for done, (batch, side, _) in enumerate(shapes, 1):
            masked = np.ones((batch, side, side, 3), np.float32)
            mask = np.ones((batch, side, side, 1), np.float32)
            jax.block_until_ready(self._forward(masked, mask))
            if progress is not None:
                progress(done, len(shapes))

    @classmethod
    def default(cls, **options: Any) -> Inpainter:
        """An Inpainter for the model shipped with the package (`deepgin_jax.shipped`; the
        environment variable DEEPGIN_SHIPPED_WEIGHTS names another shipped folder)."""
        return cls(None, **options)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | None = None,
        *,
        dtype: Any = jnp.float32,
        few_calls: bool = False,
        **options: Any,
    ) -> Inpainter:
        """An Inpainter for any generator `deepgin_jax.shipped.load_any_generator` reads (a
        converted model, a training checkpoint step, a `checkpoints/` folder, a training
        workdir, a shipped-model folder or its generator.npz; None or "shipped": the shipped
        model), computing in `dtype` (e.g. jnp.bfloat16 on GPU; the parameters stay
        float32), compiled for a few calls of each shape if `few_calls` (one photo: see
        `GeneratorForward`). The options are checked before the generator is loaded."""
        checked = _checked(options.pop("options", None), options)
        forward = GeneratorForward.from_checkpoint(checkpoint, dtype=dtype, few_calls=few_calls)
        return cls(forward, options=checked)

    @classmethod
    def from_model(
        cls, model: DeepGIN, variables: dict, *, dtype: Any = None, **options: Any
    ) -> Inpainter:
        """An Inpainter for an in-memory generator; `dtype` (if given) overrides the model's."""
        return cls(GeneratorForward(model, variables, dtype=dtype), **options)

    @classmethod
    def from_function(cls, forward: ForwardFn, **options: Any) -> Inpainter:
        """The constructor under its older name: an Inpainter around a network function."""
        return cls(forward, **options)

    def _run(self, items: list[_WorkItem], progress: ProgressFn) -> None:
        """Runs every item through the network, batched by shape (each padded to its bucket,
        `buckets.bucket_shape`), `parallel_calls` calls at a time, and delivers the results
        and reports each batch to `progress` in this thread, in the order the calls end."""
        by_shape: dict[tuple[int, int], list[_WorkItem]] = collections.defaultdict(list)
        for item in items:
            by_shape[buckets.bucket_shape(*item.hole.shape, self.buckets)].append(item)
        calls = []
        pad = pads_batches()
        for (height, width), group in by_shape.items():
            start = 0
            plan = _batch_plan(len(group), self.max_batch, self.parallel_calls, pad=pad)
            for count, batch in plan:
                calls.append((group[start : start + count], batch, height, width))
                start += count
                self.batch_shapes.add((batch, height, width))
        done = 0
        for chunk, prediction in _in_parallel(self._predict, calls, self.parallel_calls):
            for row, item in enumerate(chunk):
                item_h, item_w = item.hole.shape
                item.deliver(prediction[row, :item_h, :item_w])
            done += len(chunk)
            progress(done, len(items))

    def _predict(
        self, chunk: list[_WorkItem], batch: int, height: int, width: int
    ) -> tuple[list[_WorkItem], np.ndarray]:
        """The network's prediction for `chunk`'s items padded to `batch` x height x width."""
        masked = np.zeros((batch, height, width, 3), np.float32)
        mask = np.zeros((batch, height, width, 1), np.float32)
        for row, item in enumerate(chunk):
            masked[row] = buckets.pad_to(to_unit_float(item.masked), height, width)
            mask[row, ..., 0] = buckets.pad_to(item.hole, height, width)
        return chunk, np.asarray(self._forward(masked, mask), np.float32)


def _in_parallel(
    function: Callable[..., Any], calls: Sequence[tuple], workers: int
) -> Iterator[Any]:
    """`function(*call)` of every call, `workers` at a time (in threads when more than one),
    yielded in the order they end."""
    if workers <= 1 or len(calls) <= 1:
        yield from (function(*call) for call in calls)
        return
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(calls))) as pool:
        futures = [pool.submit(function, *call) for call in calls]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:  # an error: the calls not started yet are dropped
            for future in futures:
                future.cancel()


def _checked(options: InpaintOptions | None, fields: dict[str, Any]) -> InpaintOptions:
    """`options` (default: `InpaintOptions()`) with `fields` replaced, after `check_options`."""
    options = dataclasses.replace(InpaintOptions() if options is None else options, **fields)
    check_options(options)
    return options


def _planner(options: InpaintOptions) -> _Planner | ScaledPlanner:
    """The planner of resolved `options` (`InpaintOptions.resolved`)."""
    transforms = ENSEMBLE_TRANSFORMS if options.ensemble else ENSEMBLE_TRANSFORMS[:1]
    if options.mode == "reference":
        return _ReferencePlanner(options.tile_size, transforms)
    planner = _AutoPlanner(
        options.tile_size, options.max_direct_size, transforms, options.upscale, options.blend
    )
    if options.strategy == "whole":
        return planner
    if options.strategy in SCALED_STRATEGIES:
        return ScaledPlanner(
            planner,
            max_direct_size=options.max_direct_size,
            work_size=int(options.scaled_size),
            factor=float(options.crop_factor),
            min_size=int(options.crop_min_size),
            blend=options.blend,
            detail=options.detail,
            colour=bool(options.colour_match),
            stroke_fill=str(options.stroke_fill),
        )
    return _CropPlanner(
        planner,
        factor=float(options.crop_factor),
        min_size=int(options.crop_min_size),
        max_fraction=float(options.crop_max_fraction),
        automatic=options.strategy == "polyphase",
    )


def _finite_known(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """rgb [H, W, 3] with its non-finite (NaN, infinite) hole pixels set to 0, since they are
    replaced; ValueError naming the non-finite pixels outside the hole, which would spread
    into the fill."""
    if rgb.dtype.kind != "f":
        return rgb
    bad = ~np.isfinite(rgb).all(axis=-1)
    if not bad.any():
        return rgb
    rows, cols = np.nonzero(bad & ~hole)
    if rows.size:
        raise ValueError(
            f"the image has {rows.size} non-finite (NaN or infinite) pixel(s) outside the hole, "
            f"the first at row {rows[0]}, column {cols[0]}: the fill is made from the known "
            "pixels, so replace them or add them to the mask"
        )
    return np.where(bad[..., None], np.float32(0), rgb)
