"""The options of an `Inpainter` (`InpaintOptions`) and of reading a mask (`MaskOptions`), and
the one check of both (`check_options`) that `Inpainter`, the command lines and the shipped
model's card go through. Each error names the option, its command-line flag and the fix.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

from deepgin_jax.blending import BLENDS
from deepgin_jax.inference import buckets
from deepgin_jax.inference.geometry import (
    CROP_FACTOR,
    MIN_SIZE,
    SCALED_FACTOR,
    SIZE_MULTIPLE,
    TILE_SIZE,
)

MODES = ("auto", "reference")
# How the network sees a photo larger than its input ("auto" mode): "scaled" (each hole's box
# downscaled to the input, one pass; `scaled`), or the polyphase sub-images of "crop" (a box),
# "whole" (all of it) or "polyphase" (crop or whole by the box's size). "auto": scaled.
STRATEGIES = ("auto", "scaled", "polyphase", "crop", "whole")
SCALED_STRATEGIES = ("auto", "scaled")
# How the "scaled" strategy fills a thin hole (brush strokes): overlapping tiles at the scale of
# the brushes the network knows, or the polyphase sub-images of the box (`scaled`, `strokes`).
STROKE_FILLS = ("tiles", "polyphase")
CROP_MAX_FRACTION = 0.5  # "polyphase": crop when the crop box is at most this of the image
# `upscale` and `blend` of a network that recommends none (and always in "reference" mode).
PLAIN_SETTINGS: Mapping[str, Any] = {"upscale": 1.0, "blend": "paste"}
# The largest `dilate` radius: a disc wider than this covers most of any photo.
MAX_DILATE = 1024


@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """How a mask is read: `invert` (it marks the known region white), `threshold` (0-255, a
    value above it is a hole; None = 127, and the only choice in reference mode), `dilate`
    (grow the hole by a disc of this radius in pixels, at most `MAX_DILATE`), `resize` (resize
    a mask of another size to the image, nearest neighbour, instead of raising
    `MaskSizeError`)."""

    invert: bool = False
    threshold: int | None = None
    dilate: int = 0
    resize: bool = False


@dataclasses.dataclass(frozen=True)
class InpaintOptions:
    """How an `Inpainter` runs its network (`deepgin_jax.inference` describes each).

    mode: "auto" or "reference". strategy: how a photo larger than the network's input runs:
    "auto" or "scaled" (each hole's box downscaled to the input, one pass), or polyphase
    sub-images of "crop", "whole" or "polyphase" (crop or whole by the box's size); "reference"
    mode always whole. ensemble: the x5 self-ensemble; None = on in "reference" mode, off in
    "auto". max_batch: the most network inputs per call. tile_size: the sub-image size (256;
    smaller only for tests, a multiple of 8 and at least 16). max_direct_size: "auto" runs an
    image up to this long side in one piece (None = tile_size). crop_factor (None = 3 for
    "scaled", 2 for "crop"), crop_min_size (None = max_direct_size / 2 for "scaled", tile_size
    for "crop"), crop_max_fraction ("polyphase"): the boxes around the holes. upscale ("auto"
    mode; >= 1, 1 = off) and blend ("auto" mode; "paste" or "poisson"): None = the network's
    `recommended` setting, else `PLAIN_SETTINGS`. "scaled" only: detail (None = on: add the
    known region's full-resolution texture, `detail`), colour_match (None = on: keep the fill's mean
    colour within 1 CIELAB unit of a membrane interpolation of the hole's border and within 2
    of OpenCV Telea's fill), scaled_size (the long side a large box is downscaled to; None =
    max_direct_size), stroke_fill (a thin hole's fill, `STROKE_FILLS`; None = "tiles").
    buckets: the square input sides the network sees (`buckets`); None = a quarter, half, three
    quarters and all of max_direct_size and tile_size for a compiled generator, none (exact
    shapes) for a network function, tile_size alone in "reference" mode.
    parallel_calls: how many network calls run at once, each in its own thread (the inputs of
    one shape are shared out among them); None = one per core for a compiled generator on a
    CPU (`batching.default_parallel_calls`), 1 for a network function (which need not be
    thread-safe) and on accelerators. The same results either way.
    """

    mode: str = "auto"
    strategy: str = "auto"
    ensemble: bool | None = None
    max_batch: int = 16
    tile_size: int = TILE_SIZE
    max_direct_size: int | None = None
    crop_factor: float | None = None
    crop_min_size: int | None = None
    crop_max_fraction: float = CROP_MAX_FRACTION
    upscale: float | None = None
    blend: str | None = None
    detail: bool | None = None
    colour_match: bool | None = None
    scaled_size: int | None = None
    stroke_fill: str | None = None
    buckets: tuple[int, ...] | None = None
    parallel_calls: int | None = None

    def resolved(
        self, recommended: Mapping[str, Any] | None = None, *, compiled: bool = False
    ) -> InpaintOptions:
        """These options with every None filled: `upscale` and `blend` from `recommended` (a
        network's own settings, ignored in "reference" mode) or `PLAIN_SETTINGS`; the strategy
        "whole" in "reference" mode; the boxes by the strategy; `colour_match` and `scaled_size`
        for the "scaled" strategy only (else they stay None); the default `buckets` and
        `parallel_calls` when the network is `compiled` (compiles once per shape), else none
        and 1."""
        reference = self.mode == "reference"
        settings = {**PLAIN_SETTINGS, **({} if reference else dict(recommended or {}))}
        direct = self.tile_size if self.max_direct_size is None else self.max_direct_size
        scaled = not reference and self.strategy in SCALED_STRATEGIES
        if self.buckets is not None:
            sides = tuple(sorted(self.buckets))
        elif reference:  # always tile x tile sub-images
            sides = (self.tile_size,)
        else:
            sides = buckets.default_buckets(direct, self.tile_size) if compiled else ()
        parallel = 1
        if compiled and self.parallel_calls is None:
            from deepgin_jax.inference.batching import default_parallel_calls  # imports JAX

            parallel = default_parallel_calls()
        if self.crop_min_size is not None:
            min_size = self.crop_min_size
        else:
            min_size = direct // 2 if scaled else self.tile_size
        return dataclasses.replace(
            self,
            strategy="whole" if reference else self.strategy,
            ensemble=reference if self.ensemble is None else bool(self.ensemble),
            max_direct_size=direct,
            crop_factor=float(
                (SCALED_FACTOR if scaled else CROP_FACTOR)
                if self.crop_factor is None
                else self.crop_factor
            ),
            crop_min_size=min_size,
            upscale=float(settings["upscale"] if self.upscale is None else self.upscale),
            blend=settings["blend"] if self.blend is None else self.blend,
            detail=_scaled_default(scaled, self.detail, True),
            colour_match=_scaled_default(scaled, self.colour_match, True),
            scaled_size=_scaled_default(scaled, self.scaled_size, direct, limit=direct),
            stroke_fill=_scaled_default(scaled, self.stroke_fill, STROKE_FILLS[0]),
            buckets=sides,
            parallel_calls=self.parallel_calls if self.parallel_calls is not None else parallel,
        )


def _scaled_default(scaled: bool, value: Any, default: Any, *, limit: int | None = None) -> Any:
    """A "scaled"-only option resolved: `default` for None (at most `limit`), None when the
    strategy is not "scaled" (so the resolved options pass `check_options` again)."""
    if not scaled:
        return value
    value = default if value is None else value
    return value if limit is None else min(value, limit)


def check_options(options: InpaintOptions, mask: MaskOptions | None = None) -> None:
    """ValueError naming the first option that is invalid or does not fit the mode or strategy
    (the reference mode's rules: strategy "auto" or "whole", upscale 1, blend "paste", no mask
    threshold; `detail`, `colour_match`, `scaled_size` and `stroke_fill` only with the "scaled"
    strategy)."""
    if problem := _problem(options, mask):
        raise ValueError(problem)


def check_settings(settings: Mapping[str, Any]) -> None:
    """ValueError unless `settings` (a card's `upscale` and `blend`) are valid options."""
    check_options(InpaintOptions(upscale=settings.get("upscale"), blend=settings.get("blend")))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _problem(options: InpaintOptions, mask: MaskOptions | None) -> str | None:
    o = options
    if o.mode not in MODES:
        return f"mode must be one of {MODES}, got {o.mode!r}"
    if o.strategy not in STRATEGIES:
        return f"strategy must be one of {STRATEGIES}, got {o.strategy!r}"
    if o.upscale is not None and not (_is_number(o.upscale) and o.upscale >= 1):
        return f"upscale must be a number >= 1 (1 = off), got {o.upscale!r}"
    if o.blend is not None and o.blend not in BLENDS:
        return f"blend must be one of {BLENDS}, got {o.blend!r}"
    if not (_is_whole(o.max_batch) and o.max_batch >= 1):
        return f"max_batch must be >= 1, got {o.max_batch!r}"
    if o.tile_size < MIN_SIZE or o.tile_size % SIZE_MULTIPLE:
        return (
            f"tile_size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, "
            f"got {o.tile_size}"
        )
    factor = CROP_FACTOR if o.crop_factor is None else o.crop_factor
    if factor < 1 or not 0 < o.crop_max_fraction <= 1:
        return (
            f"need crop_factor >= 1 and 0 < crop_max_fraction <= 1, got {o.crop_factor} and "
            f"{o.crop_max_fraction}"
        )
    if o.scaled_size is not None and not (_is_whole(o.scaled_size) and o.scaled_size >= MIN_SIZE):
        return f"scaled_size must be a whole number >= {MIN_SIZE}, got {o.scaled_size!r}"
    if o.stroke_fill is not None and o.stroke_fill not in STROKE_FILLS:
        return f"stroke_fill must be one of {STROKE_FILLS}, got {o.stroke_fill!r}"
    if o.buckets is not None and any(
        not _is_whole(side) or side < MIN_SIZE or side % SIZE_MULTIPLE for side in o.buckets
    ):
        return f"buckets must be multiples of {SIZE_MULTIPLE}, at least {MIN_SIZE}: {o.buckets}"
    if o.parallel_calls is not None and not (_is_whole(o.parallel_calls) and o.parallel_calls >= 1):
        return f"parallel_calls must be a whole number >= 1, got {o.parallel_calls!r}"
    if o.mode == "reference" and (problem := _reference_problem(o, mask)):
        return problem
    if problem := _scaled_problem(o):
        return problem
    if mask is not None:
        return _mask_problem(mask)
    return None


# Why each option cannot apply in "reference" mode, which resamples the photo and blends by the
# soft mask as the original test script does.
_REFERENCE_REASONS = {
    "strategy": "it resamples the whole photo as the original test script does",
    "upscale": "it resamples the photo as the original test script does",
    "blend": "it blends by the soft mask as the original test script does",
    "threshold": (
        "the reference does not threshold the mask (any value above 0 after its bilinear "
        "resize is a hole, and the result is blended by the soft mask)"
    ),
}


def _reference_problem(options: InpaintOptions, mask: MaskOptions | None) -> str | None:
    given = []
    if options.strategy not in ("auto", "whole"):
        given.append(("strategy", f"{options.strategy!r}", f"--strategy {options.strategy}"))
    if options.upscale is not None and options.upscale != 1:
        given.append(("upscale", f"{options.upscale:g}", f"--upscale {options.upscale:g}"))
    if options.blend is not None and options.blend != "paste":
        given.append(("blend", f"{options.blend!r}", f"--blend {options.blend}"))
    if mask is not None and mask.threshold is not None:
        given.append(("threshold", f"{mask.threshold}", "--mask-threshold"))
    if not given:
        return None
    name, value, flag = given[0]
    return (
        f"{name}={value} (CLI: {flag}) cannot apply in reference mode: "
        f"{_REFERENCE_REASONS[name]}; leave it unset, or use mode='auto' (CLI: --mode auto)"
    )


def _scaled_problem(options: InpaintOptions) -> str | None:
    """Why `detail`, `colour_match`, `scaled_size` or `stroke_fill` cannot apply: they shape
    the "scaled" strategy's fill, which "reference" mode and the polyphase strategies never
    make."""
    if options.mode == "auto" and options.strategy in SCALED_STRATEGIES:
        return None
    given = [
        (name, flag)
        for name, flag, unset in (
            ("detail", " (CLI: --[no]detail)", None),
            ("colour_match", "", None),
            ("scaled_size", "", None),
            ("stroke_fill", "", None),
        )
        if getattr(options, name) != unset
    ]
    if not given:
        return None
    name, flag = given[0]
    where = "reference mode" if options.mode == "reference" else f"strategy={options.strategy!r}"
    return (
        f"{name}={getattr(options, name)!r}{flag} cannot apply with {where}: it shapes the fill "
        "of the 'scaled' strategy alone; leave it unset, or use strategy='scaled' in "
        "mode='auto' (CLI: --strategy scaled --mode auto)"
    )


def _mask_problem(mask: MaskOptions) -> str | None:
    if mask.threshold is not None and not (
        _is_number(mask.threshold) and 0 <= mask.threshold < 255
    ):
        return f"threshold (CLI: --mask-threshold) must be from 0 to 254, got {mask.threshold!r}"
    if not (_is_whole(mask.dilate) and 0 <= mask.dilate <= MAX_DILATE):
        return (
            f"dilate (CLI: --dilate) must be a whole number of pixels from 0 to {MAX_DILATE}, "
            f"got {mask.dilate!r}"
        )
    return None
