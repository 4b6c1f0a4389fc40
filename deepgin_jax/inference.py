"""Inpainting photos of any size with a trained DeepGIN: the one place that prepares masks, pads,
splits into sub-images, batches, ensembles and composites (the CLIs and the web app use it).

    inpainter = Inpainter()                             # the shipped DeepGIN-compact
    inpainter = Inpainter.from_checkpoint("checkpoints/deepgin")  # or .from_model(model, vars)
    result = inpainter.inpaint(photo, mask)             # PIL in -> PIL out, uint8 -> uint8

Images: whatever `image_io.as_rgb` reads (NumPy gray, gray + alpha, RGB or RGBA of uint8, uint16
or float in [0, 1]; PIL images of any mode, 16-bit "I;16" / "I" included). The pipeline works on
RGB [H, W, 3] in the input's dtype, the network sees it scaled to [0, 1], and the result has the
input's type, shape, dtype and PIL mode, with the alpha channel untouched. Any size from 1x1 up.

Masks: grey values by `image_io.mask_values` (white / 255 / 1.0 / True = hole; `invert_mask`
for the other polarity), binarised at `threshold` on the 0-255 scale, optionally dilated by a
disc of radius `dilate` pixels. Outside the (dilated) hole the output is bit-identical to the
input: the prediction is pasted in with the binary mask, in the input's own dtype (16-bit input
keeps all 16 bits).

Modes (the mode picks a planner once, when the `Inpainter` is built):
* "auto": an image whose long side is at most `max_direct_size` (256, the training crop size)
  goes through the network once, padded to a multiple of 8 and to at least 16 pixels a side
  (the generator's smallest input). A larger image is padded to a multiple of `tile_size`
  (256) and split by pixel-unshuffle into Fh x Fw sub-images of 256x256 (sub-image (q, p)
  holds the pixels at rows q, q+Fh, ... and columns p, p+Fw, ...; spec 7 step 3), each a
  subsampled view of the whole photo at the scale the model was trained on; all of them run
  as batches and are shuffled back. Nothing is resampled. Padding mirrors
  the image and the mask together, so a hole at the border stays a hole in the padding and
  none of the hole's content leaks into the context. The reference stores every sub-image
  transposed; "auto" does not, since training already rotates and flips its polyphase
  sub-images (spec 5.4), so only bit-parity depends on it.
* "reference": spec 7 step by step (bicubic resize to multiples of 256, transposed
  sub-images, x5 ensemble with uint8 truncations, bicubic resize back, the 1/2 down-up
  blur, composite with the original soft mask), for parity with the released results. It
  works on 8-bit pixels (16-bit input is rounded to 8 bits for the network; known pixels keep
  all 16). The mask is not thresholded (any value > 0 after the resize is a hole, and the
  composite weighs by the soft mask), so `threshold` is refused with a ValueError; `invert_mask`
  (255 - m) and `dilate` (a grey max filter) apply to the soft mask before the pipeline.

Strategies ("auto" mode): how a photo larger than `max_direct_size` reaches the network.
* "scaled" (the default, also "auto"; `deepgin_jax.scaled_fill`): each group of holes gets a
  square box `crop_factor` (3) times its long side (so the hole is a third of the box, as the
  30-70 % holes of training), at least `crop_min_size` (half of `max_direct_size`); far-apart
  holes get boxes of their own. A box larger than the network's input is area-downscaled
  (known pixels only) to `scaled_size` (`max_direct_size`) on its long side and filled in ONE
  pass; the fill is upsampled (bicubic), Poisson-blended (the `blend` setting) and, with
  `colour_match` (on), its mean CIELAB colour is kept within 1 of the colour the hole's border
  predicts (a membrane interpolation): no sub-image grid and no colour that the network
  brought from elsewhere. `detail=True` adds the known region's full-resolution texture
  (`deepgin_jax.detail_transfer`, contextual residual aggregation): lower LPIPS, but a
  phase-mean spread above the no-grid goal on eval photos, so it is off by default.
* "polyphase" (the reference's sub-images): "crop" or "whole" below (IOPaint's "crop" HD
  strategy), "crop" when the box covers at most `crop_max_fraction` of the photo.
* "crop": `crop_box` is the bounding box of all the holes, each side grown `crop_factor` (2)
  times and to at least `crop_min_size` (256), rounded up to the size the planner would pad it
  to, centred on the holes and kept inside the photo; the "auto" mode above runs on that crop
  alone and the result is pasted back. Outside the box the photo is not read by the network
  and is returned exactly.
* "whole": the network sees the whole photo, as described above.
  A photo up to 256 px a side is always whole (the box would be all of it); an object-sized
  hole in a 2560x1600 photo runs on a 1024x1024 crop (16 sub-images instead of 70).

Upscale ("auto" mode): an image (or crop) smaller than `max_direct_size` may run enlarged, by
`upscale` times at most and to at most `max_direct_size` on its long side; the filled result is
sampled back down (area average) and only its hole pixels are pasted in. The hole is enlarged by
nearest neighbour and the known pixels by bilinear interpolation of the known pixels alone, so
no hole pixel's value reaches the network. Why: the generator's decoder has no skip path above
1/4 resolution, so a narrow model cannot carry the exact pixels next to a hole through it; on
an enlarged image those pixels span fewer of its 1/4-resolution cells. A photo of 256 px or
more is never enlarged.

Blend ("auto" mode): "paste" puts the fill's hole pixels in as they are; "poisson"
(`blending.poisson_blend`) keeps the fill's differences between neighbouring hole pixels and
makes it meet the known pixels without a step, so that a colour offset at the hole's border
spreads over the hole instead of showing as a seam.

Both default to the network's `recommended` settings: a shipped model's card
(`shipped.recommended_inference`; DeepGIN-compact: upscale 2, which runs a 128x128 photo at
256x256, and "poisson"), else upscale 1 (off) and "paste".

`ensemble` adds the x5 self-ensemble (identity, rot90, rot180, rot270, left-right flip; spec 7
step 4), inverse-transformed and averaged; it defaults to on in "reference" mode, off in "auto".

Compiled shapes (`deepgin_jax.shape_buckets`). Every network input is mirror-padded to the
smallest square bucket that holds it (`buckets`, default 64, 128, 192 and 256 for the generator;
none for a network function of your own), and inputs of one bucket are batched together
across boxes, sub-images, ensemble variants and images (`inpaint_many`): a call holds up to
`max_batch` inputs and a smaller remainder is padded up to the next power of two, so the
network compiles once per (B, S, S) with B in {1, 2, 4, ..., max_batch}: any hole in any
photo reuses them. `warm_up()` compiles them all in advance. Executables are cached per model
configuration, so several `Inpainter`s of one architecture share them.

`InpainterBase` is the shared call shape; `WholeImageInpainter` adapts methods without a
network (the classical baselines in `deepgin_jax.baselines`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from deepgin_jax import blending, image_io, scaled_fill, shape_buckets, shipped
from deepgin_jax.blending import BLENDS
from deepgin_jax.image_io import convert_pixels, mask_values, to_unit_float
from deepgin_jax.models.generator import DeepGIN
from deepgin_jax.scaled_fill import ScaledPlanner

MODES = ("auto", "reference")
# How the network sees a photo larger than its input ("auto" mode): "scaled" (each hole's box
# downscaled to the input, one pass; `scaled_fill`), or the polyphase sub-images of "crop"
# (a box), "whole" (all of it) or "polyphase" (crop or whole by the box's size). "auto": scaled.
STRATEGIES = ("auto", "scaled", "polyphase", "crop", "whole")
CROP_FACTOR = 2.0  # "crop": the holes' box grown by this factor per side (at least tile_size)
CROP_MAX_FRACTION = 0.5  # "auto" strategy: crop when the crop box is at most this of the image
TILE_SIZE = 256  # the training crop size, and the reference's sub-image size
SIZE_MULTIPLE = 8  # the generator needs H and W divisible by 8
MIN_SIZE = 16  # and at least 16: its refinement encoder halves the input four times
DEFAULT_THRESHOLD = 127  # "auto" mode's mask threshold (0-255 scale) when none is given
# The Poisson blend's largest system: its sparse LU grows faster than the hole (a 640x320 hole
# took 0.85 s on 2 idle cores, a 1,144x714 one 9 s on busy ones); larger holes are pasted.
POISSON_MAX_PIXELS = 1_000_000
# What a method without a network sees in the hole (its own pixels never reach it), and its
# output where nothing is known (a hole covering the whole image): the middle grey.
HOLE_GREY = 128

# The network as a function: masked images [B, H, W, 3] float32 in [0, 1] with white holes and
# masks [B, H, W, 1] float32 (1 = hole) -> the reconstruction [B, H, W, 3] (reconst_img).
ForwardFn = Callable[[np.ndarray, np.ndarray], Any]


class MaskSizeError(ValueError):
    """The mask's size differs from the image's (and resizing it was not asked for)."""


@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """How a mask is read: `invert` (it marks the known region white), `threshold` (0-255, a
    value above it is a hole; None = 127, and the only choice in reference mode), `dilate`
    (grow the hole by a disc of this radius in pixels), `resize` (resize a mask of another size
    to the image, nearest neighbour, instead of raising `MaskSizeError`)."""

    invert: bool = False
    threshold: int | None = None
    dilate: int = 0
    resize: bool = False


# ----------------------------------------------------------------------------------------------
# Masks


def _match_size(values: np.ndarray, size: tuple[int, int], resize: bool) -> np.ndarray:
    height, width = size
    if values.shape == (height, width):
        return values
    if not resize:
        raise MaskSizeError(
            f"the mask is {values.shape[1]}x{values.shape[0]} (width x height) but the image is "
            f"{width}x{height}; pass resize_mask=True (CLI: --resize-mask) to resize the mask "
            "with nearest-neighbour sampling"
        )
    resized = Image.fromarray(values.astype(np.float32), "F").resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized, np.float32)


def disc(radius: int) -> np.ndarray:
    """The disc structuring element of `dilate`: uint8 [2r+1, 2r+1], 1 where x^2 + y^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def _dilate(values: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation (a max filter) of uint8 [H, W] with `disc(radius)`; no-op for 0."""
    if radius < 0:
        raise ValueError(f"dilate must be >= 0 pixels, got {radius}")
    if radius == 0:
        return values
    return cv2.dilate(values, disc(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def prepare_mask(
    mask: Any,
    size: tuple[int, int],
    *,
    invert: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    dilate: int = 0,
    resize: bool = False,
) -> np.ndarray:
    """The binary hole mask the network sees: bool [H, W], True = hole.

    Steps: grey values on the 0-255 scale (`image_io.mask_values`); nearest-neighbour resize to
    `size` = (H, W) if `resize`, else `MaskSizeError` on a mismatch; hole = value > threshold;
    `invert` swaps hole and known; `dilate` grows the hole by a disc of that radius.
    """
    values = _match_size(mask_values(mask), size, resize)
    hole = values > threshold
    if invert:
        hole = ~hole
    return _dilate(hole.astype(np.uint8), dilate).astype(bool)


def prepare_soft_mask(
    mask: Any, size: tuple[int, int], *, invert: bool = False, dilate: int = 0, resize: bool = False
) -> np.ndarray:
    """The reference's un-binarised 8-bit mask, uint8 [H, W], 255 = hole (spec 7 step 7).

    Values are rounded to 8 bits, resized (nearest) if asked, inverted (255 - m) if asked and
    grey-dilated (max filter over a disc) by `dilate`; no threshold is applied.
    """
    values = _match_size(mask_values(mask), size, resize)
    soft = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if invert:
        soft = 255 - soft
    return _dilate(soft, dilate)


def _binary_hole(mask: Any, size: tuple[int, int], options: MaskOptions) -> np.ndarray:
    """`prepare_mask` with `options`: bool [H, W]."""
    threshold = DEFAULT_THRESHOLD if options.threshold is None else options.threshold
    return prepare_mask(
        mask,
        size,
        invert=options.invert,
        threshold=threshold,
        dilate=options.dilate,
        resize=options.resize,
    )


def _soft_hole(mask: Any, size: tuple[int, int], options: MaskOptions) -> np.ndarray:
    """`prepare_soft_mask` with `options`: uint8 [H, W]; a threshold is refused."""
    if options.threshold is not None:
        raise ValueError(
            f"threshold={options.threshold} (CLI: --mask-threshold) cannot apply in reference "
            "mode: the reference does not threshold the mask (any value above 0 after its "
            "bilinear resize is a hole, and the result is blended by the soft mask); "
            "leave it unset, or use mode='auto'"
        )
    return prepare_soft_mask(
        mask, size, invert=options.invert, dilate=options.dilate, resize=options.resize
    )


# ----------------------------------------------------------------------------------------------
# Geometry: padding, pixel-(un)shuffle into sub-images, and the x5 self-ensemble.


def upscaled_size(height: int, width: int, upscale: float, max_side: int) -> tuple[int, int] | None:
    """The (H, W) an image runs at: scaled by min(upscale, max_side / its long side), rounded;
    None when that does not enlarge it."""
    factor = min(upscale, max_side / max(height, width))
    if factor <= 1:
        return None
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return None if size == (height, width) else size


def upsample_known(
    rgb: np.ndarray, hole: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """rgb [H, W, 3] (any pixel dtype) and bool hole [H, W] enlarged to `size` = (h, w).

    The hole by nearest neighbour; the pixels by bilinear interpolation of the known pixels
    alone (a normalised convolution: up(rgb * known) / up(known)), so that no value from inside
    the hole reaches the enlarged image. Returns (float32 [h, w, 3] in [0, 1], bool [h, w]).
    """
    height, width = size
    known = (~hole).astype(np.float32)
    weighted = to_unit_float(rgb).astype(np.float32) * known[..., None]
    numerator = cv2.resize(weighted, (width, height), interpolation=cv2.INTER_LINEAR)
    denominator = cv2.resize(known, (width, height), interpolation=cv2.INTER_LINEAR)
    big_hole = cv2.resize(
        hole.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT
    ).astype(bool)
    big_hole |= denominator <= 0  # no known pixel within reach: nothing to interpolate
    big = numerator.reshape(height, width, 3) / np.maximum(denominator, 1e-6)[..., None]
    big = np.where(big_hole[..., None], np.float32(1.0), np.clip(big, 0.0, 1.0))
    return big.astype(np.float32), big_hole


def round_up(value: int, multiple: int, minimum: int = 0) -> int:
    """The smallest multiple of `multiple` that is >= value, >= multiple and >= minimum."""
    return max(multiple, minimum, math.ceil(value / multiple) * multiple)


def mirror_pad(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pads the bottom and right of [H, W, ...] to [height, width, ...] (repeatedly
    when the padding is wider than the image; a 1-pixel side is repeated)."""
    if array.shape[:2] == (height, width):
        return array
    pad = [(0, height - array.shape[0]), (0, width - array.shape[1])]
    return np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode="reflect")


def split_subimages(big: np.ndarray, tile: int, *, transpose: bool = False) -> np.ndarray:
    """Pixel-unshuffle of [Fh*tile, Fw*tile, ...] into [Fh*Fw, tile, tile, ...] (spec 7 step 3).

    Sub-image q*Fw + p holds big[q::Fh, p::Fw]: sub[i, j] = big[q + Fh*i, p + Fw*j]. With
    `transpose` each sub-image is stored transposed, sub[i, j] = big[q + Fh*j, p + Fw*i], as in
    the reference.
    """
    fh, fw = big.shape[0] // tile, big.shape[1] // tile
    rest = big.shape[2:]
    extra = tuple(range(4, 4 + len(rest)))
    # [i, q, j, p, ...] -> [q, p, i, j, ...]
    subs = big.reshape(tile, fh, tile, fw, *rest).transpose(1, 3, 0, 2, *extra)
    if transpose:
        subs = subs.swapaxes(2, 3)
    return subs.reshape(fh * fw, tile, tile, *rest)


def merge_subimages(
    subs: np.ndarray, factors: tuple[int, int], *, transpose: bool = False
) -> np.ndarray:
    """The inverse of `split_subimages`: [Fh*Fw, th, tw, ...] -> [Fh*th, Fw*tw, ...]."""
    fh, fw = factors
    grid = subs.reshape(fh, fw, *subs.shape[1:])
    if transpose:
        grid = grid.swapaxes(2, 3)
    tile_h, tile_w, *rest = grid.shape[2:]
    # [q, p, i, j, ...] -> [i, q, j, p, ...]
    grid = grid.transpose(2, 0, 3, 1, *range(4, grid.ndim))
    return grid.reshape(fh * tile_h, fw * tile_w, *rest)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


# (forward, inverse) on [H, W, ...]: identity, rot90, rot180, rot270 (counter-clockwise, as
# PIL's rotate) and left-right flip (spec 7 step 4).
ENSEMBLE_TRANSFORMS: tuple[tuple[Callable, Callable], ...] = (
    (_identity, _identity),
    (functools.partial(np.rot90, k=1), functools.partial(np.rot90, k=-1)),
    (functools.partial(np.rot90, k=2), functools.partial(np.rot90, k=2)),
    (functools.partial(np.rot90, k=3), functools.partial(np.rot90, k=1)),
    (np.fliplr, np.fliplr),
)


# ----------------------------------------------------------------------------------------------
# Work items: network inputs from any number of images, batched by shape.


@dataclasses.dataclass(frozen=True)
class _WorkItem:
    masked: np.ndarray  # [h, w, 3] uint8 or float32 in [0, 1], holes white
    hole: np.ndarray  # [h, w] bool
    deliver: Callable[[np.ndarray], None]  # receives the prediction [h, w, 3] float32


@dataclasses.dataclass(frozen=True)
class _Job:
    items: list[_WorkItem]
    finish: Callable[[], Any]  # called after every item was delivered; returns the result


class _SubImageSum:
    """Accumulates the inverse-transformed predictions of the ensemble variants of sub-images."""

    def __init__(self, count: int, tile_hw: tuple[int, int], quantize: bool):
        self.quantize = quantize
        self.total = np.zeros((count, *tile_hw, 3), np.float64 if quantize else np.float32)
        self.variants = 0

    def items(
        self, masked: np.ndarray, hole: np.ndarray, transforms: Sequence[tuple[Callable, Callable]]
    ) -> list[_WorkItem]:
        """One work item per (sub-image, transform); masked [n, h, w, 3], hole [n, h, w]."""
        self.variants = len(transforms)
        return [
            _WorkItem(
                forward(masked[k]), forward(hole[k]), functools.partial(self._add, k, inverse)
            )
            for k in range(masked.shape[0])
            for forward, inverse in transforms
        ]

    def _add(self, index: int, inverse: Callable, prediction: np.ndarray) -> None:
        if self.quantize:  # the reference's tensor2im: x255, clip, truncate to uint8
            prediction = np.clip(prediction * np.float32(255.0), 0, 255).astype(np.uint8)
        self.total[index] += inverse(prediction)

    def mean(self) -> np.ndarray:
        """[n, h, w, 3]: float32 in [0, 1], or uint8 (rounded mean of the truncated variants)."""
        if self.quantize:
            return np.round(self.total / float(self.variants)).astype(np.uint8)
        if self.variants == 1:
            return self.total
        return self.total / np.float32(self.variants)


# progress(done, total): `done` of the `total` network inputs of a call have been run.
ProgressFn = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    del done, total


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _batch_plan(count: int, max_batch: int) -> list[tuple[int, int]]:
    """(number of real inputs, padded batch size) per call for `count` inputs of one shape."""
    plan = [(max_batch, max_batch)] * (count // max_batch)
    if count % max_batch:
        rest = count % max_batch
        plan.append((rest, min(max_batch, _next_power_of_two(rest))))
    return plan


def default_max_batch() -> int:
    """A good `max_batch` for the default JAX backend: on a CPU, batches beyond a few inputs
    only add padding and cache misses; an accelerator wants them large."""
    return 4 if jax.default_backend() == "cpu" else 16


def forward_cache_size() -> int:
    """How many compiled forms of the generator's forward pass this process holds (one per
    model configuration and input shape)."""
    return _reconstruct._cache_size()


# ----------------------------------------------------------------------------------------------
# The generator as a network function


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model: DeepGIN, variables: Any, masked: jax.Array, mask: jax.Array) -> jax.Array:
    return model.apply(variables, masked, mask).reconstructed


def _hashable(model: DeepGIN) -> DeepGIN:
    """The model with list-valued fields (as JSON metadata restores them) made tuples, so that
    it can be a static jit argument."""
    lists = {
        field.name: tuple(value)
        for field in dataclasses.fields(model)
        if isinstance(value := getattr(model, field.name, None), list)
    }
    return model.clone(**lists) if lists else model


class GeneratorForward:
    """A DeepGIN generator as a `ForwardFn` (its reconstruction), compiled once per model
    configuration and input shape for every instance.

    Args:
      model, variables: the generator and its variables.
      dtype: the computation dtype (e.g. jnp.bfloat16 on GPU), None for the model's; the
        parameters stay float32.
    """

    def __init__(
        self,
        model: DeepGIN,
        variables: Any,
        *,
        dtype: Any = None,
        recommended: dict[str, Any] | None = None,
    ):
        if dtype is not None and dtype != model.dtype:
            model = model.clone(dtype=dtype)
        self.model = _hashable(model)
        self._variables = jax.tree.map(jnp.asarray, variables)
        # `Inpainter`'s defaults for this network: {"upscale": ..., "blend": ...}.
        self.recommended = dict(recommended or {})

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike | None, *, dtype: Any = jnp.float32
    ) -> GeneratorForward:
        """The generator of a converted model, a training checkpoint step, a `checkpoints/`
        folder, a training workdir or a shipped-model folder; None = the shipped model
        (`deepgin_jax.shipped.load_generator`); a shipped model's card gives the settings it
        is `recommended` to run with (`shipped.recommended_inference`)."""
        model, variables = shipped.load_generator(checkpoint, dtype=dtype)
        return cls(model, variables, recommended=shipped.recommended_inference(checkpoint))

    def __call__(self, masked: np.ndarray, mask: np.ndarray) -> jax.Array:
        return _reconstruct(self.model, self._variables, masked, mask)


# ----------------------------------------------------------------------------------------------
# Planners: one image and its mask -> network work items and the step that finishes the image.
# `prepare` turns the caller's mask into the planner's mask (nonzero = hole); `plan` returns
# a _Job whose finish() gives (result [H, W, 3] in rgb's dtype, changed bool [H, W]).


def _composite(
    rgb: np.ndarray, hole: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes prediction [H, W, 3] (float in [0, 1], or uint8) into the hole of rgb, in rgb's
    dtype (a float prediction is rounded to the nearest level for uint8 / uint16 input)."""
    result = rgb.copy()
    result[hole] = convert_pixels(prediction[hole], rgb.dtype)  # only the hole's pixels
    return result, hole


def _blend(
    rgb: np.ndarray, hole: np.ndarray, prediction: np.ndarray, blend: str
) -> tuple[np.ndarray, np.ndarray]:
    """`_composite`, after `blending.poisson_blend` of the prediction with `blend="poisson"`
    (pasted as it is, with a warning, for holes beyond `POISSON_MAX_PIXELS`)."""
    count = int(hole.sum()) if blend == "poisson" else 0
    if count > POISSON_MAX_PIXELS:
        logging.warning(
            "The holes cover %d pixels, more than the Poisson blend solves (%d): the fill is "
            "pasted as it is (blend='paste').",
            count,
            POISSON_MAX_PIXELS,
        )
    elif count:
        blended = blending.poisson_blend(to_unit_float(rgb), hole, prediction)
        prediction = np.clip(blended, 0.0, 1.0).astype(np.float32)
    return _composite(rgb, hole, prediction)


@dataclasses.dataclass(frozen=True)
class _AutoPlanner:
    """The "auto" mode: a small image whole (enlarged up to `upscale` times), a large one as
    polyphase sub-images."""

    tile_size: int
    max_direct_size: int
    transforms: tuple[tuple[Callable, Callable], ...]
    upscale: float = 1.0
    blend: str = "paste"
    prepare = staticmethod(_binary_hole)

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        height, width = hole.shape
        size = None
        if max(height, width) <= self.max_direct_size:
            size = upscaled_size(height, width, self.upscale, self.max_direct_size)
        if size is None:
            return self._plan(rgb, hole, self.blend)
        job = self._plan(*upsample_known(rgb, hole, size), "paste")

        def finish() -> tuple[np.ndarray, np.ndarray]:
            filled, _ = job.finish()
            prediction = cv2.resize(filled, (width, height), interpolation=cv2.INTER_AREA)
            return _blend(rgb, hole, prediction.reshape(height, width, 3), self.blend)

        return _Job(job.items, finish)

    def _plan(self, rgb: np.ndarray, hole: np.ndarray, blend: str) -> _Job:
        height, width = hole.shape
        direct = max(height, width) <= self.max_direct_size
        multiple = SIZE_MULTIPLE if direct else self.tile_size
        padded_h = round_up(height, multiple, MIN_SIZE)
        padded_w = round_up(width, multiple, MIN_SIZE)
        rgb_p = mirror_pad(rgb, padded_h, padded_w)
        hole_p = mirror_pad(hole, padded_h, padded_w)
        white = np.array(image_io.full_scale(rgb.dtype), rgb.dtype)
        masked = np.where(hole_p[..., None], white, rgb_p)
        if direct:
            factors = (1, 1)
            masked_subs, hole_subs = masked[None], hole_p[None]
        else:
            factors = (padded_h // self.tile_size, padded_w // self.tile_size)
            masked_subs = split_subimages(masked, self.tile_size)
            hole_subs = split_subimages(hole_p, self.tile_size)
        accumulator = _SubImageSum(masked_subs.shape[0], masked_subs.shape[1:3], quantize=False)
        items = accumulator.items(masked_subs, hole_subs, self.transforms)

        def finish() -> tuple[np.ndarray, np.ndarray]:
            prediction = merge_subimages(accumulator.mean(), factors)[:height, :width]
            return _blend(rgb, hole, prediction, blend)

        return _Job(items, finish)


def crop_box(
    hole: np.ndarray,
    *,
    factor: float = CROP_FACTOR,
    min_size: int = TILE_SIZE,
    max_direct_size: int = TILE_SIZE,
    tile_size: int = TILE_SIZE,
) -> tuple[int, int, int, int]:
    """The region the "crop" strategy runs the network on: (top, left, bottom, right).

    Per axis: the bounding box of every hole pixel of bool [H, W], its side times `factor`
    and at least `min_size`, then rounded up to the size "auto" mode would pad that crop to
    (a multiple of 8 up to `max_direct_size`, else of `tile_size`) so that real pixels fill
    what would otherwise be mirror padding; centred on the holes, shifted to lie inside the
    image, and cut to the image's side. It always contains every hole pixel.
    """
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    if rows.size == 0:
        return 0, 0, hole.shape[0], hole.shape[1]
    spans = [(int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)]
    sides = [max(min_size, math.ceil((end - start) * factor)) for start, end in spans]
    multiple = SIZE_MULTIPLE if max(sides) <= max_direct_size else tile_size
    box = []
    for (start, end), side, limit in zip(spans, sides, hole.shape, strict=True):
        side = min(limit, round_up(side, multiple, MIN_SIZE))
        first = math.floor((start + end - side) / 2)
        first = min(max(first, end - side), start)  # keeps [start, end) inside
        first = min(max(first, 0), limit - side)
        box.append((first, first + side))
    (top, bottom), (left, right) = box
    return top, left, bottom, right


@dataclasses.dataclass(frozen=True)
class _CropPlanner:
    """The "crop" strategy around an "auto" planner: the network sees only `crop_box` of the
    photo, and the result is pasted back; with `automatic` only when that box covers at most
    `max_fraction` of the image (else the whole image, as "whole")."""

    inner: _AutoPlanner
    factor: float
    min_size: int
    max_fraction: float
    automatic: bool
    prepare = staticmethod(_binary_hole)

    def box(self, hole: np.ndarray) -> tuple[int, int, int, int] | None:
        """`crop_box` of bool [H, W] `hole`, or None when the network is to see it whole."""
        top, left, bottom, right = crop_box(
            hole,
            factor=self.factor,
            min_size=self.min_size,
            max_direct_size=self.inner.max_direct_size,
            tile_size=self.inner.tile_size,
        )
        area = (bottom - top) * (right - left)
        if area == hole.size or (self.automatic and area > self.max_fraction * hole.size):
            return None
        return top, left, bottom, right

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        box = self.box(hole)
        if box is None:
            return self.inner.plan(rgb, hole)
        top, left, bottom, right = box
        window = (slice(top, bottom), slice(left, right))
        job = self.inner.plan(rgb[window], hole[window])

        def finish() -> tuple[np.ndarray, np.ndarray]:
            filled, changed_crop = job.finish()
            result = rgb.copy()
            result[window] = filled
            changed = np.zeros(hole.shape, bool)
            changed[window] = changed_crop
            return result, changed

        return _Job(job.items, finish)


@dataclasses.dataclass(frozen=True)
class _ReferencePlanner:
    """The "reference" mode: spec 7 steps 1-7 on uint8 pixels, with the soft mask."""

    tile_size: int
    transforms: tuple[tuple[Callable, Callable], ...]
    prepare = staticmethod(_soft_hole)

    def plan(self, rgb: np.ndarray, soft: np.ndarray) -> _Job:
        original = convert_pixels(rgb, np.uint8)
        height, width = soft.shape
        tile = self.tile_size
        # Step 1: nearest multiple of 256 (Python's round: halves go to even), at least 256.
        resized_w = max(tile, round(width / tile) * tile)
        resized_h = max(tile, round(height / tile) * tile)
        big = _pil_resize(original, resized_w, resized_h, Image.Resampling.BICUBIC)
        big_mask = _pil_resize(soft, resized_w, resized_h, Image.Resampling.BILINEAR)
        # Step 2: binarise (> 0) and paint the holes white.
        hole = big_mask > 0
        big = np.where(hole[..., None], np.uint8(255), big)
        # Step 3: transposed sub-images.
        factors = (resized_h // tile, resized_w // tile)
        masked_subs = split_subimages(big, tile, transpose=True)
        hole_subs = split_subimages(hole, tile, transpose=True)
        # Step 4: ensemble with the uint8 truncation of every variant.
        accumulator = _SubImageSum(masked_subs.shape[0], (tile, tile), quantize=True)
        items = accumulator.items(masked_subs, hole_subs, self.transforms)

        def finish() -> tuple[np.ndarray, np.ndarray]:
            # Step 5: re-assemble; step 6: resize back and the 1/2 down-up low-pass.
            prediction = merge_subimages(accumulator.mean(), factors, transpose=True)
            prediction = _pil_resize(prediction, width, height, Image.Resampling.BICUBIC)
            half_w, half_h = max(1, int(width * 0.5)), max(1, int(height * 0.5))
            prediction = _pil_resize(prediction, half_w, half_h, Image.Resampling.BICUBIC)
            prediction = _pil_resize(prediction, width, height, Image.Resampling.BICUBIC)
            # Step 7: composite with the soft mask, truncated to uint8.
            weight = soft[..., None] / 255.0
            blended = prediction * weight + ((255.0 - soft[..., None]) / 255.0) * original
            result = blended.astype(np.uint8)
            changed = soft > 0
            if rgb.dtype == np.uint16:
                result = np.where(changed[..., None], convert_pixels(result, np.uint16), rgb)
            elif rgb.dtype != np.uint8:
                result = np.where(changed[..., None], result / 255.0, rgb)
            return result, changed

        return _Job(items, finish)


@dataclasses.dataclass(frozen=True)
class _WholeImagePlanner:
    """A method that fills a whole uint8 image in one call, without a network. It sees the
    hole painted `HOLE_GREY` (some methods, OpenCV's among them, return a fully covered image
    unchanged, or read the hole's pixels); a hole covering the image is filled `HOLE_GREY`."""

    fill: Callable[[np.ndarray, np.ndarray], np.ndarray]
    prepare = staticmethod(_binary_hole)

    def plan(self, rgb: np.ndarray, hole: np.ndarray) -> _Job:
        def finish() -> tuple[np.ndarray, np.ndarray]:
            masked = np.where(hole[..., None], np.uint8(HOLE_GREY), convert_pixels(rgb, np.uint8))
            filled = masked if hole.all() else self.fill(np.ascontiguousarray(masked), hole)
            return _composite(rgb, hole, filled)

        return _Job([], finish)


_Planner = _AutoPlanner | _CropPlanner | ScaledPlanner | _ReferencePlanner | _WholeImagePlanner


# ----------------------------------------------------------------------------------------------
# The inpainters


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
    """Inpaints images of any size with a DeepGIN generator (see the module docstring).

    `Inpainter()` (or `Inpainter.default()`) uses the model shipped with the package
    (`deepgin_jax.shipped`); `from_checkpoint` and `from_model` build one around another
    generator; the constructor also takes any network function with the generator's signature
    (an exported model, a stand-in network).

    Args:
      forward: forward(masked [B, H, W, 3] float32 in [0, 1], holes white; mask [B, H, W, 1]
        float32, 1 = hole) -> the reconstruction [B, H, W, 3] (array-like). A path is read as
        `from_checkpoint` reads it; None (the default) loads the shipped model.
      mode: "auto" or "reference".
      strategy: how a photo larger than the network's input runs in "auto" mode: "scaled" or
        "auto" (each hole's box downscaled to the network's input, one pass; module
        docstring), or as polyphase sub-images: "whole" (all of the photo), "crop" (only
        `crop_box`: the holes' bounding box grown `crop_factor` times and at least
        `crop_min_size` a side; the rest of the photo is never touched), or "polyphase" (crop
        when that box covers at most `crop_max_fraction` of the photo, else whole).
        "reference" mode always works on the whole photo (other strategies are refused).
      ensemble: the x5 self-ensemble; None = on in "reference" mode, off in "auto" mode.
      max_batch: the most network inputs per call.
      tile_size: sub-image size (the training crop size, 256); smaller only for tests (a
        multiple of 8, at least 16).
      max_direct_size: "auto" runs images up to this long side in one piece (default
        `tile_size`).
      crop_factor, crop_min_size, crop_max_fraction: the boxes: for "scaled" a box's side per
        hole side (3.0) and its least side (`max_direct_size` / 2); for "crop" (2.0,
        `tile_size`, 0.5).
      detail: "scaled": add the known region's full-resolution texture to a downscaled fill
        (`deepgin_jax.detail_transfer`).
      colour_match: "scaled": keep the fill's mean colour within 1 CIELAB unit of what the
        hole's border predicts.
      scaled_size: "scaled": the long side a large box is downscaled to (`max_direct_size`).
      buckets: square input sides the network sees (module docstring); None = 1/4, 1/2, 3/4
        and all of `max_direct_size` and `tile_size` for the generator, none (exact shapes) for
        a network function.
      upscale: "auto" mode: run an image smaller than `max_direct_size` enlarged up to this
        many times (module docstring); None = the network's `recommended` one (the shipped
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
        crop_factor: float | None = None,
        crop_min_size: int | None = None,
        crop_max_fraction: float = CROP_MAX_FRACTION,
        upscale: float | None = None,
        blend: str | None = None,
        detail: bool = False,
        colour_match: bool = True,
        scaled_size: int | None = None,
        buckets: Sequence[int] | None = None,
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
        if mode == "reference" and strategy not in ("auto", "whole"):
            raise ValueError(
                f"strategy={strategy!r} (CLI: --strategy {strategy}) cannot apply in reference "
                "mode, which resamples the whole photo as the original test script does; use "
                "mode='auto'"
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
        scaled = strategy in ("auto", "scaled") and mode == "auto"
        if crop_factor is None:
            crop_factor = scaled_fill.FACTOR if scaled else CROP_FACTOR
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
        self.detail = bool(detail)
        if buckets is None and mode == "reference":  # always tile x tile sub-images
            buckets = (tile_size,)
        if buckets is None:  # only the jitted generator compiles per shape
            compiles = isinstance(forward, GeneratorForward)
            buckets = (
                shape_buckets.default_buckets(self.max_direct_size, tile_size) if compiles else ()
            )
        self.buckets = tuple(sorted(buckets))
        if any(side < MIN_SIZE or side % SIZE_MULTIPLE for side in self.buckets):
            raise ValueError(
                f"buckets must be multiples of {SIZE_MULTIPLE}, at least {MIN_SIZE}: {buckets}"
            )
        self.batch_shapes: set[tuple[int, int, int]] = set()  # (B, H, W) sent to the network
        transforms = ENSEMBLE_TRANSFORMS if self.ensemble else ENSEMBLE_TRANSFORMS[:1]
        if mode == "reference":
            super().__init__(_ReferencePlanner(tile_size, transforms))
            return
        planner = _AutoPlanner(
            tile_size, self.max_direct_size, transforms, self.upscale, self.blend
        )
        if self.strategy in ("auto", "scaled"):
            work_size = self.max_direct_size if scaled_size is None else int(scaled_size)
            planner = ScaledPlanner(
                planner,
                max_direct_size=self.max_direct_size,
                work_size=min(work_size, self.max_direct_size),
                factor=float(crop_factor),
                min_size=self.max_direct_size // 2 if crop_min_size is None else crop_min_size,
                blend=self.blend,
                detail=self.detail,
                colour=bool(colour_match),
            )
        elif self.strategy != "whole":
            planner = _CropPlanner(
                planner,
                factor=float(crop_factor),
                min_size=tile_size if crop_min_size is None else int(crop_min_size),
                max_fraction=float(crop_max_fraction),
                automatic=self.strategy == "polyphase",
            )
        super().__init__(planner)

    def crop_box(self, hole: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right) of the region the network sees for bool [H, W] `hole`
        (the prepared mask) under this Inpainter's strategy, or None for the whole image."""
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
            for batch in shape_buckets.batch_sizes(self.max_batch)
        ]
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
            by_shape[shape_buckets.bucket_shape(*item.hole.shape, self.buckets)].append(item)
        for (height, width), group in by_shape.items():
            start = 0
            for count, batch in _batch_plan(len(group), self.max_batch):
                chunk = group[start : start + count]
                start += count
                masked = np.zeros((batch, height, width, 3), np.float32)
                mask = np.zeros((batch, height, width, 1), np.float32)
                for row, item in enumerate(chunk):
                    masked[row] = shape_buckets.pad_to(to_unit_float(item.masked), height, width)
                    mask[row, ..., 0] = shape_buckets.pad_to(item.hole, height, width)
                self.batch_shapes.add((batch, height, width))
                prediction = np.asarray(self._forward(masked, mask), np.float32)
                for row, item in enumerate(chunk):
                    item_h, item_w = item.hole.shape
                    item.deliver(prediction[row, :item_h, :item_w])
                done += count
                progress(done, len(items))


def _pil_resize(array: np.ndarray, width: int, height: int, method: Image.Resampling) -> np.ndarray:
    """PIL resize of uint8 [H, W] or [H, W, 3] (a copy when the size is unchanged, as PIL)."""
    return np.asarray(Image.fromarray(array).resize((width, height), method))
