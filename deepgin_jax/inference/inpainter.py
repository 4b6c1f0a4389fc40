"""The inpainters: `InpainterBase` (the call shape every method shares), `Inpainter` (DeepGIN)
and `WholeImageInpainter` (methods without a network: the classical baselines in
`deepgin_jax.baselines`).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from deepgin_jax import image_io
from deepgin_jax.blending import BLENDS
from deepgin_jax.image_io import to_unit_float
from deepgin_jax.inference.batching import (
    ProgressFn,
    _batch_plan,
    _Job,
    _no_progress,
    _WorkItem,
)
from deepgin_jax.inference.geometry import (
    CROP_FACTOR,
    ENSEMBLE_TRANSFORMS,
    MIN_SIZE,
    SIZE_MULTIPLE,
    TILE_SIZE,
)
from deepgin_jax.inference.holes import MaskOptions
from deepgin_jax.inference.network import ForwardFn, GeneratorForward
from deepgin_jax.inference.options import CROP_MAX_FRACTION, MODES, STRATEGIES
from deepgin_jax.inference.planners import (
    _AutoPlanner,
    _CropPlanner,
    _Planner,
    _ReferencePlanner,
    _WholeImagePlanner,
)
from deepgin_jax.models.generator import DeepGIN


class InpainterBase:
    """The call shape every inpainting method shares (the DeepGIN `Inpainter` and the classical
    baselines): the caller's images become RGB (`image_io.as_rgb`), the planner prepares each
    mask and plans each image, `_run` runs the work items of all images together, and the
    results go back to the caller's types. An empty mask returns a copy of the image."""

    def __init__(self, planner: _Planner):
        self._planner = planner

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
            uint16 or float in [0, 1], or a PIL image of any mode; any size from 1x1.
          mask: np.ndarray (bool / uint8 / uint16 / float; [H, W] or [H, W, 1|2|3|4]) or a PIL
            image; white / 255 / 1.0 / True = hole (`image_io.mask_values`).
          invert_mask: the mask marks the known region instead.
          threshold: a value above it (0-255 scale) is a hole; None = 127. "auto" mode only:
            "reference" mode binarises at > 0 after its resize, like the reference, and
            raises ValueError for any other threshold.
          dilate: grow the hole by a disc of this radius in pixels (in "reference" mode a grey
            dilation of the soft mask).
          resize_mask: resize a mask of another size to the image (nearest neighbour) instead
            of raising `MaskSizeError`.
          progress: called as progress(done, total) after each batch of network inputs
            (sub-images, ensemble variants) has gone through the network: `done` of `total`
            inputs are done (a progress bar's unit of work). Methods without a network (the
            baselines) do not call it.

        Returns:
          The same type, shape and dtype (PIL: mode) as `image`, alpha and PIL metadata kept.
          An empty mask returns a copy of `image` without running the network.

        Raises:
          MaskSizeError: the mask's size differs and `resize_mask` is off.
          ValueError / TypeError: an unsupported shape, dtype or option.
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
        return self._planner.plan(rgb, prepared)

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
        float32, 1 = hole) -> the reconstruction [B, H, W, 3] (array-like). A path is read as
        `from_checkpoint` reads it; None (the default) loads the shipped model.
      mode: "auto" or "reference".
      strategy: how much of the photo the network sees in "auto" mode: "whole" (all of it),
        "crop" (only `crop_box`: the holes' bounding box grown `crop_factor` times and at least
        `crop_min_size` a side; the rest of the photo is never touched), or "auto" (crop when
        that box covers at most `crop_max_fraction` of the photo, else whole). "reference"
        mode always works on the whole photo ("crop" is refused there).
      ensemble: the x5 self-ensemble; None = on in "reference" mode, off in "auto" mode.
      max_batch: the most network inputs per call.
      tile_size: sub-image size (the training crop size, 256); smaller only for tests (a
        multiple of 8, at least 16).
      max_direct_size: "auto" runs images up to this long side in one piece (default
        `tile_size`).
      crop_factor, crop_min_size, crop_max_fraction: the "crop" strategy's box (defaults 2.0,
        `tile_size`, 0.5).
      upscale: "auto" mode: run an image smaller than `max_direct_size` enlarged up to this
        many times (`deepgin_jax.inference`); None = the network's `recommended` one (the shipped
        model's card: 2 for DeepGIN-compact), else 1 (off). Must be 1 in "reference" mode.
      blend: "auto" mode: how the fill meets the photo, "paste" (its pixels as they are) or
        "poisson" (`blending.poisson_blend`: seam-free); None = the network's `recommended`
        one (the shipped model's card: "poisson" for DeepGIN-compact), else "paste". Must be
        "paste" in "reference" mode, which blends by the soft mask.
      dtype: with a path (or None) only: the computation dtype (default float32).
    """

    def __init__(
        self,
        forward: ForwardFn | str | os.PathLike | None = None,
        *,
        mode: str = "auto",
        strategy: str = "auto",
        ensemble: bool | None = None,
        max_batch: int = 16,
        tile_size: int = TILE_SIZE,
        max_direct_size: int | None = None,
        crop_factor: float = CROP_FACTOR,
        crop_min_size: int | None = None,
        crop_max_fraction: float = CROP_MAX_FRACTION,
        upscale: float | None = None,
        blend: str | None = None,
        dtype: Any = None,
    ):
        if forward is None or isinstance(forward, (str, os.PathLike)):
            forward = GeneratorForward.from_checkpoint(forward, dtype=dtype or jnp.float32)
        elif dtype is not None:
            raise TypeError("dtype applies to a checkpoint; use from_model(..., dtype=...)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if mode == "reference" and strategy == "crop":
            raise ValueError(
                "strategy='crop' (CLI: --strategy crop) cannot apply in reference mode, which "
                "resamples the whole photo as the original test script does; use mode='auto'"
            )
        recommended = {} if mode == "reference" else getattr(forward, "recommended", {})
        upscale = recommended.get("upscale", 1.0) if upscale is None else upscale
        blend = recommended.get("blend", "paste") if blend is None else blend
        if not upscale >= 1:
            raise ValueError(f"upscale must be >= 1 (1 = off), got {upscale}")
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
        if mode == "reference" and (upscale != 1 or blend != "paste"):
            raise ValueError(
                f"upscale={upscale} and blend={blend!r} (CLI: --upscale, --blend) cannot apply "
                "in reference mode, which resamples the photo and blends by the soft mask as "
                "the original test script does; leave them unset, or use mode='auto'"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if tile_size < MIN_SIZE or tile_size % SIZE_MULTIPLE:
            raise ValueError(
                f"tile_size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, "
                f"got {tile_size}"
            )
        if crop_factor < 1 or not 0 < crop_max_fraction <= 1:
            raise ValueError(
                f"need crop_factor >= 1 and 0 < crop_max_fraction <= 1, got {crop_factor} and "
                f"{crop_max_fraction}"
            )
        self._forward = forward
        self.model: DeepGIN | None = getattr(forward, "model", None)
        self.mode = mode
        self.strategy = "whole" if mode == "reference" else strategy
        self.ensemble = (mode == "reference") if ensemble is None else bool(ensemble)
        self.max_batch = max_batch
        self.tile_size = tile_size
        self.max_direct_size = tile_size if max_direct_size is None else max_direct_size
        self.upscale = float(upscale)
        self.blend = blend
        self.batch_shapes: set[tuple[int, int, int]] = set()  # (B, H, W) sent to the network
        transforms = ENSEMBLE_TRANSFORMS if self.ensemble else ENSEMBLE_TRANSFORMS[:1]
        if mode == "reference":
            super().__init__(_ReferencePlanner(tile_size, transforms))
            return
        planner = _AutoPlanner(
            tile_size, self.max_direct_size, transforms, self.upscale, self.blend
        )
        if self.strategy != "whole":
            planner = _CropPlanner(
                planner,
                factor=float(crop_factor),
                min_size=tile_size if crop_min_size is None else int(crop_min_size),
                max_fraction=float(crop_max_fraction),
                automatic=self.strategy == "auto",
            )
        super().__init__(planner)

    def crop_box(self, hole: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right) of the region the network sees for bool [H, W] `hole`
        (the prepared mask) under this Inpainter's strategy, or None for the whole image."""
        if not isinstance(self._planner, _CropPlanner) or not hole.any():
            return None
        return self._planner.box(hole)

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
        **options: Any,
    ) -> Inpainter:
        """An Inpainter for the generator of a converted model, a training checkpoint step, a
        `checkpoints/` folder, a training workdir or a shipped-model folder (None: the shipped
        model; `deepgin_jax.shipped.load_generator`), computing in `dtype` (e.g. jnp.bfloat16
        on GPU; the parameters stay float32)."""
        return cls(GeneratorForward.from_checkpoint(checkpoint, dtype=dtype), **options)

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
        """Runs every item through the network, batched by shape, delivers the results and
        reports each batch to `progress`."""
        done = 0
        by_shape: dict[tuple[int, int], list[_WorkItem]] = collections.defaultdict(list)
        for item in items:
            by_shape[item.hole.shape].append(item)
        for (height, width), group in by_shape.items():
            start = 0
            for count, batch in _batch_plan(len(group), self.max_batch):
                chunk = group[start : start + count]
                start += count
                masked = np.zeros((batch, height, width, 3), np.float32)
                mask = np.zeros((batch, height, width, 1), np.float32)
                for row, item in enumerate(chunk):
                    masked[row] = to_unit_float(item.masked)
                    mask[row, ..., 0] = item.hole
                self.batch_shapes.add((batch, height, width))
                prediction = np.asarray(self._forward(masked, mask), np.float32)
                for row, item in enumerate(chunk):
                    item.deliver(prediction[row])
                done += count
                progress(done, len(items))
