"""Inpainting photos of any size with a trained DeepGIN: the one place that prepares masks, pads,
splits into sub-images, batches, ensembles and composites (the CLIs and the web app use it).

    inpainter = Inpainter()                             # the shipped DeepGIN-compact
    inpainter = Inpainter.from_checkpoint("checkpoints/deepgin")  # or .from_model(model, vars)
    result = inpainter.inpaint(photo, mask)             # PIL in -> PIL out, uint8 -> uint8

Images: whatever `image_io.as_rgb` reads (NumPy gray, gray + alpha, RGB or RGBA of uint8, uint16
or float in [0, 1]; PIL images of any mode, 16-bit "I;16" / "I" included). The pipeline works on
RGB [H, W, 3] in the input's dtype, the network sees it scaled to [0, 1], and the result has the
input's type, shape, dtype and PIL mode, with the alpha channel untouched. Any size from 1x1 up.

Masks (`holes`): white / 255 / 1.0 / True = hole (`invert_mask` for the other polarity),
binarised at `threshold` (0-255), optionally dilated by a disc of radius `dilate` pixels. Outside
the (dilated) hole the output is bit-identical to the input.

Modes (the mode picks a planner once, when the `Inpainter` is built; `planners`):
* "auto": an image up to `max_direct_size` (256, the training crop size) a side goes through the
  network once; a larger one as polyphase 256x256 sub-images (`geometry`), run as batches
  (`batching`) and shuffled back. Nothing is resampled.
* "reference": spec 7 step by step, for parity with the released results; the mask is not
  thresholded (so `threshold` is refused), and `upscale`, `blend`, the strategies other than
  "auto" and "whole" and the "scaled" options do not apply.

Strategies ("auto" mode): how a photo larger than `max_direct_size` reaches the network.
* "scaled" (the default, also "auto"; `scaled`): each group of holes gets a square box
  `crop_factor` (3) times its long side, at least `crop_min_size` (half of `max_direct_size`);
  far-apart holes get boxes of their own. A box larger than the network's input is
  area-downscaled (known pixels only) to `scaled_size` (`max_direct_size`) on its long side
  and filled in ONE pass, except a thin hole (brush strokes), which goes through the
  polyphase sub-images of the box's own pixels, de-gridded (`strokes`); the fill is upsampled
  (bicubic), meets the photo by `blend` and, with `colour_match` (on), keeps its mean CIELAB
  colour within 1 of a membrane interpolation of the hole's border and within 2 of OpenCV
  Telea's fill; `detail` (on) adds the known region's full-resolution texture (`detail`,
  contextual residual aggregation, no lattice): lower LPIPS for a few hundredths of a dB.
* "polyphase" (the reference's sub-images; IOPaint's "crop" HD strategy): "crop" when the
  holes' box covers at most `crop_max_fraction` (half) of the photo, else "whole". "crop" runs
  the network on `crop_box` alone (the holes' bounding box grown `crop_factor` (2) times and
  to at least `crop_min_size` (256)) and pastes the result back; "whole" runs it on the whole
  photo. An object-sized hole in a 2560x1600 photo runs on a 1024x1024 crop (16 sub-images
  instead of 70).

Upscale ("auto" mode): an image (or crop) smaller than `max_direct_size` may run enlarged, by
`upscale` times at most and to at most `max_direct_size` on its long side; only the fill's hole
pixels, sampled back down, are pasted in. Blend ("auto" mode): "paste" puts the fill's hole
pixels in as they are; "poisson" (`blending.poisson_blend`) makes it meet the known pixels
without a seam. Both default to the network's `recommended` settings: a shipped model's card
(`shipped.recommended_inference`; DeepGIN-compact: upscale 2 and "poisson"), else upscale 1
(off) and "paste". `ensemble` adds the x5 self-ensemble (spec 7 step 4); it defaults to on in
"reference" mode, off in "auto".

Compiled shapes (`buckets`): every network input is mirror-padded to the smallest square bucket
that holds it (`buckets`, default 64, 128, 192 and 256 for the generator; none for a network
function of your own), and inputs of one bucket are batched together (`batching`), so the
network compiles once per (B, S, S) with B in {1, 2, 4, ..., max_batch}: any hole in any photo
reuses them. `Inpainter.warm_up(progress)` compiles them all in advance.

Modules: `holes` (mask preparation), `geometry` (padding, sub-images, crop box, enlargement),
`batching` (network inputs batched by shape), `buckets` (the square input shapes), `network`
(the generator as a function), `planners` (per-mode plans and the composite), `scaled` (the
"scaled" strategy) and `detail` (its detail transfer), `options` (the options and their check),
`inpainter` (the public classes). Every public name is importable from this package.
"""

from deepgin_jax import blending
from deepgin_jax.blending import BLENDERS, BLENDS, POISSON_MAX_PIXELS
from deepgin_jax.inference.batching import ProgressFn, default_max_batch
from deepgin_jax.inference.geometry import (
    CROP_FACTOR,
    ENSEMBLE_TRANSFORMS,
    MIN_SIZE,
    SIZE_MULTIPLE,
    TILE_SIZE,
    crop_box,
    merge_subimages,
    mirror_pad,
    round_up,
    split_subimages,
    upsample_known,
    upscaled_size,
)
from deepgin_jax.inference.holes import (
    DEFAULT_THRESHOLD,
    MaskSizeError,
    disc,
    prepare_mask,
    prepare_soft_mask,
)
from deepgin_jax.inference.inpainter import Inpainter, InpainterBase, WholeImageInpainter
from deepgin_jax.inference.network import ForwardFn, GeneratorForward, forward_cache_size
from deepgin_jax.inference.options import (
    CROP_MAX_FRACTION,
    MAX_DILATE,
    MODES,
    PLAIN_SETTINGS,
    SCALED_STRATEGIES,
    STRATEGIES,
    InpaintOptions,
    MaskOptions,
    check_options,
)
from deepgin_jax.inference.planners import HOLE_GREY
from deepgin_jax.inference.scaled import ScaledPlanner

__all__ = [
    "BLENDERS",
    "BLENDS",
    "CROP_FACTOR",
    "CROP_MAX_FRACTION",
    "DEFAULT_THRESHOLD",
    "ENSEMBLE_TRANSFORMS",
    "HOLE_GREY",
    "MAX_DILATE",
    "MIN_SIZE",
    "MODES",
    "PLAIN_SETTINGS",
    "POISSON_MAX_PIXELS",
    "SCALED_STRATEGIES",
    "SIZE_MULTIPLE",
    "STRATEGIES",
    "TILE_SIZE",
    "ForwardFn",
    "GeneratorForward",
    "InpaintOptions",
    "Inpainter",
    "InpainterBase",
    "MaskOptions",
    "MaskSizeError",
    "ProgressFn",
    "ScaledPlanner",
    "WholeImageInpainter",
    "blending",
    "check_options",
    "crop_box",
    "default_max_batch",
    "disc",
    "forward_cache_size",
    "merge_subimages",
    "mirror_pad",
    "prepare_mask",
    "prepare_soft_mask",
    "round_up",
    "split_subimages",
    "upsample_known",
    "upscaled_size",
]
