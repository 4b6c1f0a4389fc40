"""Inpainting photos of any size with a trained DeepGIN: the one place that prepares masks, pads,
splits into sub-images, batches, ensembles and composites (the CLIs and the web app use it).

    inpainter = Inpainter("checkpoints/deepgin")        # or Inpainter.from_model(model, variables)
    result = inpainter.inpaint(photo, mask)             # PIL in -> PIL out, uint8 -> uint8

Images: NumPy arrays [H, W] (gray), [H, W, 2] (gray + alpha), [H, W, 3] (RGB) or [H, W, 4]
(RGBA) of uint8, uint16 or float in [0, 1], or PIL images of any mode (16-bit "I;16" / "I"
included). The network sees every image as RGB scaled to [0, 1]; the result has the input's
type, shape, dtype and PIL mode, with the alpha channel untouched. Any size from 1x1 up.

Masks: white / 255 / 1.0 / True = hole (`invert_mask` for the other polarity), binarised at
`threshold` on the 0-255 scale, optionally dilated by a disc of radius `dilate` pixels. Outside
the (dilated) hole the output is bit-identical to the input: the prediction is pasted in with
the binary mask, in the input's own dtype (16-bit input keeps all 16 bits).

Modes:
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

`ensemble` adds the x5 self-ensemble (identity, rot90, rot180, rot270, left-right flip; spec 7
step 4), inverse-transformed and averaged; it defaults to on in "reference" mode, off in "auto".

Compiled shapes. Network inputs of one shape are batched together across sub-images, ensemble
variants and images (`inpaint_many`): a call holds up to `max_batch` inputs and a smaller
remainder is padded up to the next power of two, so the network compiles once per (B, H, W)
with B in {1, 2, 4, ..., max_batch}. H x W is 256 x 256 for sub-images (always, in
"reference" mode), or the image's size rounded up to multiples of 8 (at least 16) for a small
image (and its transpose too with `ensemble`, when not square). Executables are cached per
model configuration, so several `Inpainter`s of one architecture share them.

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

from deepgin_jax.checkpointing import load_generator
from deepgin_jax.models.generator import DeepGIN

MODES = ("auto", "reference")
TILE_SIZE = 256  # the training crop size, and the reference's sub-image size
SIZE_MULTIPLE = 8  # the generator needs H and W divisible by 8
MIN_SIZE = 16  # and at least 16: its refinement encoder halves the input four times
DEFAULT_THRESHOLD = 127  # "auto" mode's mask threshold (0-255 scale) when none is given

# The network as a function: masked images [B, H, W, 3] float32 in [0, 1] with white holes and
# masks [B, H, W, 1] float32 (1 = hole) -> the reconstruction [B, H, W, 3] (reconst_img).
ForwardFn = Callable[[np.ndarray, np.ndarray], Any]

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's RGB -> L
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class MaskSizeError(ValueError):
    """The mask's size differs from the image's (and resizing it was not asked for)."""


# ----------------------------------------------------------------------------------------------
# Masks


def mask_values(mask: Any) -> np.ndarray:
    """A mask's grey values on the 0-255 scale: float32 [H, W].

    Accepts a PIL image (any mode) or an array [H, W] / [H, W, 1|3|4] of bool (True = 255),
    uint8, uint16 (divided by 257) or float in [0, 1] (times 255). Colour masks count through
    their luminance; an RGBA mask whose colour is constant is a painted layer and its alpha
    channel is the mask (the same rules as `image_io.load_mask`).
    """
    if isinstance(mask, Image.Image):
        return _pil_mask_values(mask)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array or a PIL image, got {type(mask).__name__}")
    values = _array_mask_scale(mask)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 2:
        return values
    if values.ndim != 3 or values.shape[-1] not in (3, 4):
        raise ValueError(f"mask must be [H, W] or [H, W, 1|3|4], got shape {mask.shape}")
    colour = values[..., :3]
    if values.shape[-1] == 4 and (colour == colour.reshape(-1, 3)[0]).all():
        return values[..., 3]
    if mask.dtype == np.uint8:
        return np.asarray(Image.fromarray(mask[..., :3], "RGB").convert("L"), np.float32)
    return (colour @ _LUMA_WEIGHTS).astype(np.float32)


def _array_mask_scale(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.bool_:
        return mask.astype(np.float32) * 255.0
    if mask.dtype == np.uint8:
        return mask.astype(np.float32)
    if mask.dtype == np.uint16:
        return mask.astype(np.float32) / 257.0
    if np.issubdtype(mask.dtype, np.floating):
        return mask.astype(np.float32) * 255.0
    raise TypeError(
        f"mask dtype {mask.dtype} is ambiguous: pass bool (True = hole), uint8 (255 = hole), "
        "uint16 or float in [0, 1]"
    )


def _pil_mask_values(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "L")
        mode = img.mode
    if mode == "1":
        return np.asarray(img, np.float32) * 255.0
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img).astype(np.float32) / 257.0
    if mode == "F":
        return np.asarray(img, np.float32)
    if mode in _ALPHA_MODES:
        return mask_values(np.asarray(img.convert("RGBA")))
    return np.asarray(img.convert("L"), np.float32)


def _resize_nearest(values: np.ndarray, height: int, width: int) -> np.ndarray:
    resized = Image.fromarray(values.astype(np.float32), "F").resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized, np.float32)


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
    return _resize_nearest(values, height, width)


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
    threshold: float = 127,
    dilate: int = 0,
    resize: bool = False,
) -> np.ndarray:
    """The binary hole mask the network sees: bool [H, W], True = hole.

    Steps: grey values on the 0-255 scale (`mask_values`); nearest-neighbour resize to
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


# ----------------------------------------------------------------------------------------------
# Images: whatever the caller gives becomes RGB [H, W, 3], and goes back to the caller's type.


@dataclasses.dataclass(frozen=True)
class _Pixels:
    """rgb: [H, W, 3], uint8, uint16 or float32 in [0, 1]. restore(rgb_out, changed) -> the
    caller's type, with rgb_out [H, W, 3] in rgb's dtype and changed bool [H, W]."""

    rgb: np.ndarray
    restore: Callable[[np.ndarray, np.ndarray], Any]


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Gray [H, W] of RGB [H, W, 3] in rgb's dtype (PIL's RGB -> L for uint8)."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).convert("L"))
    if rgb.dtype == np.uint16:
        gray = np.rint(rgb.astype(np.float64) @ _LUMA_WEIGHTS)
        return np.clip(gray, 0, 65535).astype(np.uint16)
    return rgb @ _LUMA_WEIGHTS.astype(rgb.dtype)


def _full_scale(dtype: np.dtype) -> int | float:
    """The value of white: 255 for uint8, 65535 for uint16, 1.0 for float."""
    return {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(np.dtype(dtype), 1.0)


def _convert(pixels: np.ndarray, dtype: Any) -> np.ndarray:
    """Pixels as uint8, uint16 or float32 in [0, 1], rounding to the nearest integer level
    (uint16 -> uint8 is round(v / 257), uint8 -> uint16 is v * 257, both exact inverses)."""
    dtype = np.dtype(dtype)
    if pixels.dtype == dtype and dtype in (np.uint8, np.uint16):
        return pixels
    if pixels.dtype == np.uint16 and dtype == np.uint8:
        return np.rint(pixels / 257.0).astype(np.uint8)
    if pixels.dtype == np.uint8 and dtype == np.uint16:
        return pixels.astype(np.uint16) * np.uint16(257)
    if dtype == np.uint8:  # float -> uint8 in float32 arithmetic, as always
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        unit = np.clip(pixels.astype(np.float64), 0.0, 1.0)
        return np.rint(unit * 65535.0).astype(np.uint16)
    return _unit_float(pixels).astype(dtype)


def _array_pixels(image: np.ndarray) -> _Pixels:
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image must be uint8, uint16 or float in [0, 1], got dtype {image.dtype}")
    if image.ndim == 2:
        planes, squeeze = image[..., None], True
    elif image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
        planes, squeeze = image, False
    else:
        raise ValueError(f"image must be [H, W] or [H, W, 1|2|3|4], got shape {image.shape}")
    colours = 1 if planes.shape[-1] <= 2 else 3  # gray (+ alpha) or RGB (+ alpha)
    colour, alpha = planes[..., :colours], planes[..., colours:]
    work = colour if image.dtype in (np.uint8, np.uint16) else colour.astype(np.float32)
    if colours == 1:
        work = np.repeat(work, 3, axis=-1)

    def restore(rgb: np.ndarray, changed: np.ndarray) -> np.ndarray:
        new = rgb if colours == 3 else _luma(rgb)[..., None]
        out = np.where(changed[..., None], new.astype(image.dtype), colour)
        if alpha.shape[-1]:
            out = np.concatenate([out, alpha], axis=-1)
        return out[..., 0] if squeeze else out

    return _Pixels(np.ascontiguousarray(work), restore)


def _sixteen_bit_array(image: Image.Image) -> np.ndarray:
    """A 16-bit PIL image ("I;16*", or "I" holding 0-65535) as native uint16 [H, W]."""
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"a mode {image.mode} image must hold 16-bit values (0-65535), got "
            f"{values.min()}..{values.max()}"
        )
    return values.astype(np.uint16)


def _sixteen_bit_image(values: np.ndarray, mode: str) -> Image.Image:
    """uint16 [H, W] back to a PIL image of `mode` ("I;16", "I;16L", "I;16B", "I;16N", "I")."""
    if mode == "I":
        return Image.fromarray(values.astype(np.int32))
    byte_order = {"I;16B": ">u2", "I;16N": "=u2"}.get(mode, "<u2")
    height, width = values.shape
    return Image.frombytes(mode, (width, height), values.astype(byte_order).tobytes())


def _pil_pixels(image: Image.Image) -> _Pixels:
    mode = image.mode
    info = dict(image.info)
    if mode in _SIXTEEN_BIT_MODES:
        pixels = _array_pixels(_sixteen_bit_array(image))

        def restore_sixteen(rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
            out = _sixteen_bit_image(pixels.restore(rgb, changed), mode)
            out.info.update(info)
            return out

        return _Pixels(pixels.rgb, restore_sixteen)
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        mode = "L"
    elif mode not in ("RGB", "RGBA", "L", "LA"):
        has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    pixels = _array_pixels(np.asarray(image))

    def restore(rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
        out = Image.fromarray(pixels.restore(rgb, changed))  # same mode: L, LA, RGB or RGBA
        out.info.update(info)
        return out

    return _Pixels(pixels.rgb, restore)


def _as_pixels(image: Any) -> _Pixels:
    if isinstance(image, Image.Image):
        return _pil_pixels(image)
    if isinstance(image, np.ndarray):
        return _array_pixels(image)
    raise TypeError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")


def _copy(image: Any) -> Any:
    return image.copy()


# ----------------------------------------------------------------------------------------------
# Geometry: padding, pixel-(un)shuffle into sub-images, and the x5 self-ensemble.


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
        return self.total / np.float32(self.variants)


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


def _model_forward(model: DeepGIN, variables: Any) -> ForwardFn:
    model = _hashable(model)
    variables = jax.tree.map(jnp.asarray, variables)

    def forward(masked: np.ndarray, mask: np.ndarray) -> jax.Array:
        return _reconstruct(model, variables, masked, mask)

    return forward


# ----------------------------------------------------------------------------------------------
# The inpainters


class InpainterBase:
    """The call shape every inpainting method shares (the DeepGIN `Inpainter` and the classical
    baselines): input conversion, mask preparation, the empty-mask shortcut, batching across
    images and the type-preserving output. Subclasses plan the work of one image."""

    mode = "auto"
    ensemble = False

    # -- public API ----------------------------------------------------------------------------

    def inpaint(
        self,
        image: Any,
        mask: Any,
        *,
        invert_mask: bool = False,
        threshold: int | None = None,
        dilate: int = 0,
        resize_mask: bool = False,
    ) -> Any:
        """Fills the holes of one image.

        Args:
          image: np.ndarray [H, W] / [H, W, 1|2|3|4] (gray, gray + alpha, RGB, RGBA) of uint8,
            uint16 or float in [0, 1], or a PIL image of any mode; any size from 1x1.
          mask: np.ndarray (bool / uint8 / uint16 / float; [H, W] or [H, W, 1|3|4]) or a PIL
            image; white / 255 / 1.0 / True = hole.
          invert_mask: the mask marks the known region instead.
          threshold: a value above it (0-255 scale) is a hole; None = 127. "auto" mode only:
            "reference" mode binarises at > 0 after its resize, like the reference, and
            raises ValueError for any other threshold.
          dilate: grow the hole by a disc of this radius in pixels (in "reference" mode a grey
            dilation of the soft mask).
          resize_mask: resize a mask of another size to the image (nearest neighbour) instead
            of raising `MaskSizeError`.

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
    ) -> list[Any]:
        """`inpaint` for several images at once; their network inputs share batches."""
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        if self.mode == "reference" and threshold is not None:
            raise ValueError(
                f"threshold={threshold} (CLI: --mask-threshold) cannot apply in reference mode: "
                "the reference does not threshold the mask (any value above 0 after its "
                "bilinear resize is a hole, and the result is blended by the soft mask); "
                "leave it unset, or use mode='auto'"
            )
        if threshold is None:
            threshold = DEFAULT_THRESHOLD
        jobs = []
        for image, mask in zip(images, masks, strict=True):
            pixels = _as_pixels(image)
            size = pixels.rgb.shape[:2]
            if self.mode == "reference":
                soft = prepare_soft_mask(
                    mask, size, invert=invert_mask, dilate=dilate, resize=resize_mask
                )
                jobs.append(self._plan(image, pixels, soft > 0, soft))
            else:
                hole = prepare_mask(
                    mask,
                    size,
                    invert=invert_mask,
                    threshold=threshold,
                    dilate=dilate,
                    resize=resize_mask,
                )
                jobs.append(self._plan(image, pixels, hole, None))
        self._run([item for job in jobs for item in job.items])
        return [job.finish() for job in jobs]

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, image: Any, pixels: _Pixels, hole: np.ndarray, soft: np.ndarray | None) -> _Job:
        if not hole.any():
            return _Job([], functools.partial(_copy, image))
        if hole.all():
            logging.warning(
                "The mask covers the whole %dx%d image: nothing is known, the result is the "
                "network's guess.",
                hole.shape[1],
                hole.shape[0],
            )
        if self.mode == "reference":
            return self._plan_reference(pixels, soft)
        return self._plan_auto(pixels, hole)

    def _plan_auto(self, pixels: _Pixels, hole: np.ndarray) -> _Job:
        raise NotImplementedError

    def _plan_reference(self, pixels: _Pixels, soft: np.ndarray) -> _Job:
        raise NotImplementedError(f"{type(self).__name__} has no reference mode")

    def _run(self, items: list[_WorkItem]) -> None:
        if items:
            raise NotImplementedError(f"{type(self).__name__} runs no network")


def _composite(pixels: _Pixels, hole: np.ndarray, prediction: np.ndarray) -> Any:
    """Pastes prediction [H, W, 3] (float in [0, 1], or uint8) into the hole, in the input's
    dtype (a float prediction is rounded to the nearest level for uint8 / uint16 input)."""
    rgb = pixels.rgb
    composite = np.where(hole[..., None], _convert(prediction, rgb.dtype), rgb)
    return pixels.restore(composite, hole)


class WholeImageInpainter(InpainterBase):
    """A method that fills a whole image in one call, without a network batch (the classical
    baselines): subclasses implement `fill`."""

    def fill(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """rgb uint8 [H, W, 3], hole bool [H, W] -> the filled image, uint8 [H, W, 3]."""
        raise NotImplementedError

    def _plan_auto(self, pixels: _Pixels, hole: np.ndarray) -> _Job:
        def finish() -> Any:
            rgb = _convert(pixels.rgb, np.uint8)
            return _composite(pixels, hole, self.fill(np.ascontiguousarray(rgb), hole))

        return _Job([], finish)


class Inpainter(InpainterBase):
    """Inpaints images of any size with a DeepGIN generator (see the module docstring).

    Args:
      checkpoint: a converted model, a training checkpoint step, a `checkpoints/` folder or a
        training workdir (`deepgin_jax.checkpointing.load_generator`).
      mode: "auto" or "reference".
      ensemble: the x5 self-ensemble; None = on in "reference" mode, off in "auto" mode.
      dtype: computation dtype of the network (e.g. jnp.bfloat16 on GPU); params stay float32.
      max_batch: the most network inputs per call.
      tile_size: sub-image size (the training crop size, 256); smaller only for tests (a
        multiple of 8, at least 16).
      max_direct_size: "auto" runs images up to this long side in one piece (default
        `tile_size`).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        mode: str = "auto",
        ensemble: bool | None = None,
        dtype: Any = jnp.float32,
        max_batch: int = 16,
        tile_size: int = TILE_SIZE,
        max_direct_size: int | None = None,
    ):
        model, variables = load_generator(checkpoint, dtype=dtype)
        self._configure(
            _model_forward(model, variables),
            mode=mode,
            ensemble=ensemble,
            max_batch=max_batch,
            tile_size=tile_size,
            max_direct_size=max_direct_size,
        )
        self.model = model

    @classmethod
    def from_model(cls, model: DeepGIN, variables: dict, **kwargs: Any) -> Inpainter:
        """An Inpainter for an in-memory generator; `dtype` (if given) overrides the model's."""
        dtype = kwargs.pop("dtype", None)
        if dtype is not None and dtype != model.dtype:
            model = model.clone(dtype=dtype)
        inpainter = cls.from_function(_model_forward(model, variables), **kwargs)
        inpainter.model = model
        return inpainter

    @classmethod
    def from_function(
        cls,
        forward: ForwardFn,
        *,
        mode: str = "auto",
        ensemble: bool | None = None,
        max_batch: int = 16,
        tile_size: int = TILE_SIZE,
        max_direct_size: int | None = None,
    ) -> Inpainter:
        """An Inpainter around any network function with the generator's signature:

        forward(masked [B, H, W, 3] float32 in [0, 1], holes white; mask [B, H, W, 1] float32,
        1 = hole) -> the reconstruction [B, H, W, 3] (array-like). Used for exported models
        and for testing the pipeline with a stand-in network.
        """
        inpainter = cls.__new__(cls)
        inpainter._configure(
            forward,
            mode=mode,
            ensemble=ensemble,
            max_batch=max_batch,
            tile_size=tile_size,
            max_direct_size=max_direct_size,
        )
        inpainter.model = None
        return inpainter

    def _configure(
        self,
        forward: ForwardFn,
        *,
        mode: str,
        ensemble: bool | None,
        max_batch: int,
        tile_size: int,
        max_direct_size: int | None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if tile_size < MIN_SIZE or tile_size % SIZE_MULTIPLE:
            raise ValueError(
                f"tile_size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, "
                f"got {tile_size}"
            )
        self._forward = forward
        self.mode = mode
        self.ensemble = (mode == "reference") if ensemble is None else bool(ensemble)
        self.max_batch = max_batch
        self.tile_size = tile_size
        self.max_direct_size = tile_size if max_direct_size is None else max_direct_size
        self.batch_shapes: set[tuple[int, int, int]] = set()  # (B, H, W) sent to the network

    def _transforms(self) -> tuple[tuple[Callable, Callable], ...]:
        return ENSEMBLE_TRANSFORMS if self.ensemble else ENSEMBLE_TRANSFORMS[:1]

    def _plan_auto(self, pixels: _Pixels, hole: np.ndarray) -> _Job:
        rgb = pixels.rgb
        height, width = hole.shape
        direct = max(height, width) <= self.max_direct_size
        multiple = SIZE_MULTIPLE if direct else self.tile_size
        padded_h = round_up(height, multiple, MIN_SIZE)
        padded_w = round_up(width, multiple, MIN_SIZE)
        rgb_p = mirror_pad(rgb, padded_h, padded_w)
        hole_p = mirror_pad(hole, padded_h, padded_w)
        white = np.array(_full_scale(rgb.dtype), rgb.dtype)
        masked = np.where(hole_p[..., None], white, rgb_p)
        if direct:
            factors = (1, 1)
            masked_subs, hole_subs = masked[None], hole_p[None]
        else:
            factors = (padded_h // self.tile_size, padded_w // self.tile_size)
            masked_subs = split_subimages(masked, self.tile_size)
            hole_subs = split_subimages(hole_p, self.tile_size)
        accumulator = _SubImageSum(masked_subs.shape[0], masked_subs.shape[1:3], quantize=False)
        items = accumulator.items(masked_subs, hole_subs, self._transforms())

        def finish() -> Any:
            prediction = merge_subimages(accumulator.mean(), factors)[:height, :width]
            return _composite(pixels, hole, prediction)

        return _Job(items, finish)

    def _plan_reference(self, pixels: _Pixels, soft: np.ndarray) -> _Job:
        """Spec 7 steps 1-7 on uint8 pixels, with the original soft mask `soft` uint8 [H, W]."""
        original = pixels.rgb
        if original.dtype == np.uint16:
            original = _convert(original, np.uint8)
        elif original.dtype != np.uint8:
            original = np.clip(np.rint(original * 255.0), 0, 255).astype(np.uint8)
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
        items = accumulator.items(masked_subs, hole_subs, self._transforms())

        def finish() -> Any:
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
            if pixels.rgb.dtype == np.uint16:
                result = np.where(changed[..., None], _convert(result, np.uint16), pixels.rgb)
            elif pixels.rgb.dtype != np.uint8:
                result = np.where(changed[..., None], result / 255.0, pixels.rgb)
            return pixels.restore(result, changed)

        return _Job(items, finish)

    # -- running the network -------------------------------------------------------------------

    def _run(self, items: list[_WorkItem]) -> None:
        """Runs every item through the network, batched by shape, and delivers the results."""
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
                    masked[row] = _unit_float(item.masked)
                    mask[row, ..., 0] = item.hole
                self.batch_shapes.add((batch, height, width))
                prediction = np.asarray(self._forward(masked, mask), np.float32)
                for row, item in enumerate(chunk):
                    item.deliver(prediction[row])


def _unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 pixels scaled to float32 [0, 1]; float pixels clipped to [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    if pixels.dtype == np.uint16:
        return (pixels / 65535.0).astype(np.float32)
    return np.clip(pixels, 0.0, 1.0)


def _pil_resize(array: np.ndarray, width: int, height: int, method: Image.Resampling) -> np.ndarray:
    """PIL resize of uint8 [H, W] or [H, W, 3] (a copy when the size is unchanged, as PIL)."""
    return np.asarray(Image.fromarray(array).resize((width, height), method))
