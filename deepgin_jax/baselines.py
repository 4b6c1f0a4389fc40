"""Classical inpainting baselines with the `Inpainter` call shape, for side-by-side evaluation.

* "telea": Telea (2004), "An image inpainting technique based on the fast marching method":
  fills the hole from its border inwards, each pixel a weighted average of known neighbours
  within `radius`.
* "ns": Bertalmio, Bertozzi and Sapiro (2001), "Navier-Stokes, fluid dynamics, and image and
  video inpainting": propagates isophotes into the hole.

Both are OpenCV's `cv2.inpaint`; the masks, input types and compositing are the Inpainter's
(`deepgin_jax.inference.InpainterBase`), so pixels outside the hole are returned unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np

from deepgin_jax.inference import WholeImageInpainter

OPENCV_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
DEFAULT_RADIUS = 3.0


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
        hole_u8 = hole.astype(np.uint8) * 255
        return cv2.inpaint(rgb, hole_u8, self.radius, OPENCV_METHODS[self.method])

    def __repr__(self) -> str:
        return f"OpenCVInpainter(method={self.method!r}, radius={self.radius})"
