"""Classical inpainting baselines with the `Inpainter` call shape, for side-by-side evaluation.

* "telea": Telea (2004), "An image inpainting technique based on the fast marching method":
  fills the hole from its border inwards, each pixel a weighted average of known neighbours
  within `radius`.
* "ns": Bertalmio, Bertozzi and Sapiro (2001), "Navier-Stokes, fluid dynamics, and image and
  video inpainting": propagates isophotes into the hole.

* "patchmatch": Barnes, Shechtman, Finkelstein and Goldman (2009), "PatchMatch: a randomized
  correspondence algorithm for structural image editing": fills the hole with patches copied
  from the known region, coarse to fine over an image pyramid (`patchmatch_cython`'s
  `inpaint_pyramid`, 5x5 patches, seeded: the same input gives the same output; at full
  resolution only, `inpaint_single`, when the hole touches every block of the coarsest level).
* "biharmonic": Damelin and Hoang (2018), "On surface completion and image inpainting by
  biharmonic functions: numerical aspects": the smoothest fill (zero bilaplacian) that meets
  the known pixels, one sparse linear system per connected hole (scikit-image's
  `inpaint_biharmonic`).
* "fsr_fast": frequency selective reconstruction (Seiler et al., IEEE TIP 2015; the fast
  variant of Genser et al., PCS 2018): block by block, the known neighbourhood is modelled by
  a sparse sum of Fourier basis functions that extends into the hole (OpenCV contrib's
  `xphoto.inpaint`, INPAINT_FSR_FAST).

Telea and Navier-Stokes are OpenCV's `cv2.inpaint`. For all of them the masks, input types and
compositing are the Inpainter's (`deepgin_jax.inference.InpainterBase`), so pixels outside the
hole are returned unchanged; each sees the hole painted grey (`inference.HOLE_GREY`), never its
original pixels, and a hole covering the whole image comes back that grey.
"""

from __future__ import annotations

import cv2
import numpy as np

from deepgin_jax.inference import HOLE_GREY, WholeImageInpainter, mirror_pad

OPENCV_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
BASELINES = (*OPENCV_METHODS, "biharmonic", "fsr_fast", "patchmatch")
DEFAULT_RADIUS = 3.0
PATCH_SIZE = 5
# xphoto's FSR returns garbage in the hole of an image under 16 px a side (its block size):
# smaller images are mirror-padded to this first.
FSR_MIN_SIDE = 16


class OpenCVInpainter(WholeImageInpainter):
    """`inpaint(image, mask, ...)` / `inpaint_many(...)` with OpenCV's Telea or Navier-Stokes.

    Args:
      method: "telea" or "ns".
      radius: the neighbourhood radius in pixels that each filled pixel draws from.
    """

    def __init__(self, method: str = "telea", radius: float = DEFAULT_RADIUS):
        if method not in OPENCV_METHODS:
            raise ValueError(f"method must be one of {sorted(OPENCV_METHODS)}, got {method!r}")
        if radius <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        super().__init__()
        self.method = method
        self.radius = float(radius)

    def fill(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """rgb uint8 [H, W, 3], hole bool [H, W] -> uint8 [H, W, 3]."""
        if hole.all():  # cv2.inpaint would return rgb as it is: the grey, as nothing is known
            return np.full_like(rgb, HOLE_GREY)
        hole_u8 = hole.astype(np.uint8) * 255
        return cv2.inpaint(rgb, hole_u8, self.radius, OPENCV_METHODS[self.method])

    def __repr__(self) -> str:
        return f"OpenCVInpainter(method={self.method!r}, radius={self.radius})"


class PatchMatchInpainter(WholeImageInpainter):
    """`inpaint(image, mask, ...)` / `inpaint_many(...)` with PatchMatch (module docstring).

    Args:
      patch_size: the side of the square patches (odd).
      seed: the seed of the random nearest-neighbour field; fixed, so results repeat.

    An image smaller than a patch is mirror-padded to one first (the padding's holes stay
    holes), as the library refuses it.
    """

    def __init__(self, patch_size: int = PATCH_SIZE, seed: int = 0):
        if patch_size < 3 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and at least 3, got {patch_size}")
        import patchmatch_cython  # an install requirement; imported on first use only

        super().__init__()
        self._library = patchmatch_cython
        self.patch_size = patch_size
        self.seed = seed

    def fill(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """rgb uint8 [H, W, 3], hole bool [H, W] -> uint8 [H, W, 3]."""
        height, width = hole.shape
        if hole.all():  # nothing to copy from: the grey, as no patch is known
            return np.full_like(rgb, HOLE_GREY)
        padded_h, padded_w = max(height, self.patch_size), max(width, self.patch_size)
        rgb = mirror_pad(rgb, padded_h, padded_w)
        hole = mirror_pad(hole, padded_h, padded_w)
        try:
            filled = self._library.inpaint_pyramid(
                rgb, hole, patch_size=self.patch_size, seed=self.seed
            )
        except ValueError as e:
            # A scattered hole can touch every block of the coarsest pyramid level, which then
            # has no known pixel: match at full resolution only.
            if "covers the entire image" not in str(e):
                raise
            filled = self._library.inpaint_single(
                rgb, hole, patch_size=self.patch_size, iterations=7, seed=self.seed
            )
        return np.asarray(filled, np.uint8)[:height, :width]

    def __repr__(self) -> str:
        return f"PatchMatchInpainter(patch_size={self.patch_size}, seed={self.seed})"


class BiharmonicInpainter(WholeImageInpainter):
    """`inpaint(image, mask, ...)` / `inpaint_many(...)` with biharmonic inpainting (module
    docstring). Each connected hole is solved on its own bounding box (the system only couples
    a hole's pixels), so the cost grows with the hole's area, not the photo's: 0.7 s for a 6 %
    ellipse in a 746x512 photo, 16 s in a 2560x1600 one (one CPU core)."""

    def fill(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """rgb uint8 [H, W, 3], hole bool [H, W] -> uint8 [H, W, 3]."""
        from skimage.restoration import inpaint_biharmonic  # imported on first use only

        if hole.all():  # no known pixel to meet: the grey
            return np.full_like(rgb, HOLE_GREY)
        filled = inpaint_biharmonic(rgb, hole, split_into_regions=True, channel_axis=-1)
        return np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return "BiharmonicInpainter()"


class FSRInpainter(WholeImageInpainter):
    """`inpaint(image, mask, ...)` / `inpaint_many(...)` with OpenCV contrib's fast frequency
    selective reconstruction (module docstring). An image under `FSR_MIN_SIDE` pixels a side is
    mirror-padded to it first (the padding's holes stay holes)."""

    def fill(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """rgb uint8 [H, W, 3], hole bool [H, W] -> uint8 [H, W, 3]."""
        if hole.all():  # nothing to model: the grey
            return np.full_like(rgb, HOLE_GREY)
        height, width = hole.shape
        padded_h, padded_w = max(height, FSR_MIN_SIDE), max(width, FSR_MIN_SIDE)
        bgr = np.ascontiguousarray(mirror_pad(rgb, padded_h, padded_w)[..., ::-1])
        known = (~mirror_pad(hole, padded_h, padded_w)).astype(np.uint8) * 255  # 0 = to fill
        filled = np.zeros_like(bgr)
        cv2.xphoto.inpaint(bgr, known, filled, cv2.xphoto.INPAINT_FSR_FAST)
        return np.ascontiguousarray(filled[:height, :width, ::-1])

    def __repr__(self) -> str:
        return "FSRInpainter()"


def make_baseline(name: str, radius: float = DEFAULT_RADIUS) -> WholeImageInpainter:
    """The baseline called `name` (one of `BASELINES`); `radius` is the OpenCV methods'."""
    if name in OPENCV_METHODS:
        return OpenCVInpainter(name, radius)
    if name == "patchmatch":
        return PatchMatchInpainter()
    if name == "biharmonic":
        return BiharmonicInpainter()
    if name == "fsr_fast":
        return FSRInpainter()
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
