"""Reading and writing photos and masks: every pixel format a user may hand us becomes uint8 RGB.

`load_image` accepts JPEG, PNG (8 and 16 bit), WebP and the other formats Pillow reads, in any
mode (grayscale, grayscale+alpha, palette, RGBA, CMYK, 16-bit), applies the EXIF orientation,
and returns the RGB pixels with the alpha channel, EXIF and ICC profile kept apart so that
`save_image` can write them back. Unreadable input raises `ImageReadError`, which names the
file and the reason.

Masks on disk are 8-bit PNG with 255 = hole; `load_mask` also accepts RGB, 16-bit and painted
alpha layers and binarises them (value > threshold = hole).
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from absl import logging
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deepgin_jax.atomic import atomic_write

ImageSource = str | os.PathLike | bytes | BinaryIO

# Extension -> Pillow format name for writing.
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_ALPHA_FORMATS = frozenset({"PNG", "WEBP"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageReadError(ValueError):
    """An image or mask file that cannot be decoded; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """A decoded image, upright (EXIF orientation applied).

    Attributes:
      rgb: uint8 `[H, W, 3]`.
      alpha: uint8 `[H, W]` (255 = opaque) if the file had transparency, else None.
      exif: EXIF block without the orientation tag, or None.
      icc_profile: ICC profile describing `rgb`, or None (dropped for CMYK sources).
      format: the file's format as Pillow names it ("JPEG", "PNG", "WEBP", ...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    exif: bytes | None
    icc_profile: bytes | None
    format: str

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", "<stream>")


def _open_decoded(source: ImageSource, label: str) -> Image.Image:
    """Opens and fully decodes `source` (so truncation is caught here), as an upright image."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
    except FileNotFoundError as e:
        raise ImageReadError(f"{label}: file not found") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{label}: is a folder, not an image file") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{label}: not an image in a format Pillow can read") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{label}: image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated"),
        # SyntaxError (bad PNG chunks) or ValueError.
        raise ImageReadError(f"{label}: corrupt or truncated image data ({e})") from e
    return img


def _exif_without_orientation(img: Image.Image) -> bytes | None:
    raw = img.info.get("exif")
    if not raw:
        return None
    exif = img.getexif()
    if ExifTags.Base.Orientation not in exif:
        return raw
    del exif[ExifTags.Base.Orientation]
    return exif.tobytes()


def _sixteen_bit_to_uint8(img: Image.Image) -> np.ndarray:
    values = np.asarray(img).astype(np.float64)
    return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)


def _split_rgb_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 `[H, W, 3]` colour and optional uint8 `[H, W]` alpha for any Pillow mode."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
        mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = _sixteen_bit_to_uint8(img)
        return np.repeat(gray[..., None], 3, axis=-1), None
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1), None
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, np.uint8).copy(), None


def load_image(source: ImageSource, *, name: str | None = None) -> LoadedImage:
    """Decodes an image file, bytes or stream into upright uint8 RGB plus alpha and metadata.

    Args:
      source: a path, the encoded bytes, or a binary stream.
      name: how to refer to the image in error messages (defaults to the path).

    Raises:
      ImageReadError: missing, truncated, corrupt or unrecognised data.
    """
    label = _describe(source, name)
    img = _open_decoded(source, label)
    try:
        rgb, alpha = _split_rgb_alpha(img)
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{label}: cannot convert mode {img.mode} to RGB ({e})") from e
    icc_profile = None if img.mode == "CMYK" else img.info.get("icc_profile") or None
    return LoadedImage(
        rgb=rgb,
        alpha=alpha,
        exif=_exif_without_orientation(img),
        icc_profile=icc_profile,
        format=img.format or "",
    )


def read_rgb(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Upright uint8 RGB `[H, W, 3]` of an image (alpha and metadata dropped)."""
    return load_image(source, name=name).rgb


def _mask_values(img: Image.Image) -> np.ndarray:
    """The mask's grey values on a 0-255 scale, float `[H, W]`."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "L")
        mode = img.mode
    if mode == "1":
        return np.asarray(img, np.float64) * 255.0
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img).astype(np.float64) / 257.0
    if mode == "F":
        return np.asarray(img, np.float64)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = np.asarray(img.convert("RGBA"))
        colour = rgba[..., :3]
        if (colour == colour.reshape(-1, 3)[0]).all():
            # A painted layer: constant colour, the strokes live in the alpha channel.
            return rgba[..., 3].astype(np.float64)
        return np.asarray(img.convert("RGB").convert("L"), np.float64)
    return np.asarray(img.convert("L"), np.float64)


def load_mask(
    source: ImageSource, *, threshold: float = 127, invert: bool = False, name: str | None = None
) -> np.ndarray:
    """Reads a mask file as bool `[H, W]`, True = hole.

    Grayscale is used as is, colour through its luminance, 16-bit scaled to 0-255; for RGBA or
    grayscale+alpha files whose colour channels are constant the alpha channel is the mask
    (a painted layer). Pixels brighter than `threshold` (0-255 scale) are holes; `invert` swaps
    the polarity for masks that mark the known region white.

    Raises:
      ImageReadError: missing, truncated, corrupt or unrecognised data.
    """
    label = _describe(source, name)
    values = _mask_values(_open_decoded(source, label))
    hole = values > threshold
    return ~hole if invert else hole


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {array.dtype}.")


def _write_format(path: Path) -> str:
    file_format = _WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(
            f"{path}: cannot tell the image format from the extension {path.suffix!r}; "
            f"use one of {sorted(_WRITE_FORMATS)}."
        )
    return file_format


def encode_image(
    rgb: np.ndarray,
    file_format: str,
    *,
    alpha: np.ndarray | None = None,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
) -> bytes:
    """Encodes uint8 (or float [0, 1]) RGB `[H, W, 3]` as "PNG", "JPEG" or "WEBP" bytes.

    Alpha `[H, W]` is kept for PNG and WebP and dropped (with a warning) for JPEG. JPEG at
    quality >= 90 uses 4:4:4 chroma so that inpainted detail is not blurred by subsampling.
    """
    rgb = _as_uint8(rgb, "rgb")
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape [H, W, 3], got {rgb.shape}.")
    img = Image.fromarray(rgb, "RGB")
    if alpha is not None:
        alpha = _as_uint8(alpha, "alpha")
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match the image {rgb.shape[:2]}.")
        if file_format in _ALPHA_FORMATS:
            img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        else:
            logging.warning(
                "%s cannot store transparency; the alpha channel is dropped.", file_format
            )
    options: dict = {}
    if exif:
        options["exif"] = exif
    if icc_profile:
        options["icc_profile"] = icc_profile
    if file_format == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif file_format == "WEBP":
        options.update(quality=quality)
    buffer = io.BytesIO()
    img.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def save_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
) -> None:
    """Writes RGB `[H, W, 3]` (uint8, or float in [0, 1]) atomically; format from the extension.

    `.png`, `.jpg`/`.jpeg` and `.webp` are supported; alpha, EXIF and ICC are written where the
    format allows.
    """
    path = Path(path)
    data = encode_image(
        rgb, _write_format(path), alpha=alpha, exif=exif, icc_profile=icc_profile, quality=quality
    )
    with atomic_write(path, "wb") as f:
        f.write(data)


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Writes a mask (`[H, W]` or `[H, W, 1]`, nonzero/True = hole) as an 8-bit 0/255 PNG."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: masks are written as PNG (lossless); use a .png file name.")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [H, W] or [H, W, 1], got {mask.shape}.")
    pixels = np.where(mask > 0.5 if mask.dtype != np.bool_ else mask, 255, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())
