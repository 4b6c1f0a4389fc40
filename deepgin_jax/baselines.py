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

Telea and Navier-Stokes are OpenCV's `cv2.inpaint`. For all three the masks, input types and
compositing are the Inpainter's (`deepgin_jax.inference.InpainterBase`), so pixels outside the
hole are returned unchanged; each sees the hole painted grey (`inference.HOLE_GREY`), never its
original pixels, and a hole covering the whole image comes back that grey.
"""

from __future__ import annotations

import cv2
import numpy as np

from deepgin_jax.inference import HOLE_GREY, WholeImageInpainter, mirror_pad

OPENCV_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
BASELINES = (*OPENCV_METHODS, "patchmatch")
DEFAULT_RADIUS = 3.0
PATCH_SIZE = 5


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


def make_baseline(name: str, radius: float = DEFAULT_RADIUS) -> WholeImageInpainter:
    """The baseline called `name` (one of `BASELINES`); `radius` is the OpenCV methods'."""
    if name in OPENCV_METHODS:
        return OpenCVInpainter(name, radius)
    if name == "patchmatch":
        return PatchMatchInpainter()
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
