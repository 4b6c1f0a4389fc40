"""The options of an `Inpainter`: its modes and strategies."""

from __future__ import annotations

MODES = ("auto", "reference")
STRATEGIES = ("auto", "crop", "whole")  # how much of the photo the network sees ("auto" mode)
CROP_MAX_FRACTION = 0.5  # "auto" strategy: crop when the crop box is at most this of the image
