"""Photos and masks in every pixel format a user may hand us, and their files.

This module owns pixel formats: Pillow modes, 16 bits, alpha, EXIF and the mask convention.

Files. `load_image` accepts JPEG, PNG (8 and 16 bit), WebP and the other formats Pillow reads,
in any mode (grayscale, grayscale+alpha, palette, RGBA, CMYK, 16-bit), applies the EXIF
orientation, and returns the RGB pixels with the alpha channel, EXIF and ICC profile kept apart
so that `save_image` can write them back. Pixels are uint8, or with `keep_16_bit=True` uint16
for a 16-bit source (a 16-bit PNG of any colour type, or a 16-bit grayscale image of another
format). Pillow reads 16-bit colour PNGs as 8 bit, so every 16-bit PNG is decoded with OpenCV
(reduced to 8 bits by rounding v / 257 unless 16 bits are kept). Unreadable input raises
`ImageReadError`, which names the file and the reason.

`save_image` writes uint8 pixels as 8-bit and uint16 pixels as 16-bit PNG (with OpenCV; the ICC
profile and EXIF are added as PNG chunks). JPEG and WebP hold 8 bits only: 16-bit pixels are
rounded to 8 bits for them, with a warning. WebP is written losslessly by default (every pixel
kept, also the colour under transparent pixels); JPEG is always lossy.

Masks. White = hole. `mask_values` reads a mask of any form (a PIL image of any mode; an array
[H, W] / [H, W, 1|2|3|4] of bool, uint8, uint16 or float in [0, 1]) as grey values on the 0-255
scale: colour through its luminance, 16 bits divided by 257; a mask with alpha whose colour is
constant is a painted layer and its alpha is the mask. `read_mask` decodes a mask file as
`load_image` decodes a photo (EXIF orientation, 16-bit PNG); `load_mask` binarises it
(value > threshold = hole). `save_mask` writes 8-bit PNG with 255 = hole.

In memory. `as_rgb` turns an image as a caller may hold it (an array of gray, gray+alpha, RGB
or RGBA, of uint8, uint16 or float in [0, 1]; a PIL image of any mode) into RGB [H, W, 3] and
gives back a function that returns processed RGB to the caller's type, shape, dtype and mode
(a palette image comes back as RGB(A): a palette cannot hold new colours), alpha kept. Float
pixels outside [0, 1] (e.g. on the 0-255 scale) are an error, not clipped.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from absl import logging
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deepgin_jax.atomic import atomic_write

ImageSource = str | os.PathLike | bytes | BinaryIO

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask"  # "photo_mask.png" is the mask of "photo.png", not a photo
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_ARRAY_MODES = frozenset({"L", "LA", "RGB", "RGBA"})  # modes NumPy and Pillow exchange as is
# Modes `as_rgb` reads as RGB and gives back in their own mode by Pillow's conversion from RGB
# ("1" dithered). A palette ("P", "PA") cannot hold a fill's new colours: it comes back as RGB(A).
CONVERTED_MODES = frozenset({"1", "CMYK", "YCbCr", "LAB", "HSV"})
# How far float pixels may lie outside [0, 1] (round-off, a resampling's ringing) and still be
# clipped: one 8-bit level; farther is an error (an image on the 0-255 scale, most likely).
FLOAT_RANGE_TOLERANCE = 1 / 255
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's RGB -> L

# Extension -> Pillow format name for writing.
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_ALPHA_FORMATS = frozenset({"PNG", "WEBP"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR_END = 33  # signature (8) + IHDR length, type, 13 data bytes and CRC (25)
# The zlib level of written PNGs. 1 writes a 2560x1600 photo in a quarter of the time of level
# 6 (0.10-0.15 s against 0.46-0.53 s, `benchmarks.one_photo`) in a file a quarter larger
# (2.51 MB against 1.97 MB); 6-9 for the smallest files (`--png_compression`).
PNG_COMPRESSION = 1


class ImageReadError(ValueError):
    """An image or mask file that cannot be decoded; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------
# Pixel formats


def to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit levels rounded to the nearest 8-bit level, round(v / 257) (8-bit v * 257 comes
    back exactly); uint8 unchanged. Values outside 0-65535 are clipped."""
    if values.dtype == np.uint8:
        return values
    return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 pixels scaled to float32 [0, 1]; float pixels clipped to [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    if pixels.dtype == np.uint16:
        return (pixels / 65535.0).astype(np.float32)
    return np.clip(pixels, 0.0, 1.0)


def convert_pixels(pixels: np.ndarray, dtype: Any) -> np.ndarray:
    """Pixels as uint8, uint16 or float in [0, 1], rounding to the nearest integer level
    (uint16 -> uint8 is round(v / 257), uint8 -> uint16 is v * 257, both exact inverses)."""
    dtype = np.dtype(dtype)
    if pixels.dtype == dtype and dtype in (np.uint8, np.uint16):
        return pixels
    if pixels.dtype == np.uint16 and dtype == np.uint8:
        return to_uint8(pixels)
    if pixels.dtype == np.uint8 and dtype == np.uint16:
        return pixels.astype(np.uint16) * np.uint16(257)
    if dtype == np.uint8:  # float -> uint8 in float32 arithmetic, as always
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        unit = np.clip(pixels.astype(np.float64), 0.0, 1.0)
        return np.rint(unit * 65535.0).astype(np.uint16)
    return to_unit_float(pixels).astype(dtype)


def full_scale(dtype: Any) -> int | float:
    """The value of white: 255 for uint8, 65535 for uint16, 1.0 for float."""
    return {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(np.dtype(dtype), 1.0)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Gray [H, W] of RGB [H, W, 3] in rgb's dtype (PIL's RGB -> L for uint8)."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).convert("L"))
    if rgb.dtype == np.uint16:
        gray = np.rint(rgb.astype(np.float64) @ LUMA_WEIGHTS)
        return np.clip(gray, 0, 65535).astype(np.uint16)
    return rgb @ LUMA_WEIGHTS.astype(rgb.dtype)


def _colour_and_alpha(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gray [H, W, 1] or RGB [H, W, 3], and alpha [H, W, 0|1], of planes [H, W, 1|2|3|4]."""
    colours = 1 if planes.shape[-1] <= 2 else 3
    return planes[..., :colours], planes[..., colours:]


def pil_planes(img: Image.Image, *, keep_16_bit: bool = False) -> np.ndarray:
    """The pixels of a Pillow image of any mode: [H, W] gray, or [H, W, 2|3|4] gray + alpha,
    RGB or RGBA; uint8, or with `keep_16_bit` uint16 for 16-bit gray holding 0-65535.

    16-bit gray is otherwise rounded to 8 bits (v / 257), "F" rounded to 8-bit gray; palette,
    CMYK and the other modes become RGB, or RGBA when they carry transparency; gray with a
    transparent colour becomes gray + alpha.
    """
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if keep_16_bit and values.size and values.min() >= 0 and values.max() <= 65535:
            return values.astype(np.uint16)
        return to_uint8(values)
    if mode == "F":
        return np.clip(np.rint(np.asarray(img, np.float64)), 0, 255).astype(np.uint8)
    if mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
    elif mode not in _ARRAY_MODES:
        has_alpha = mode in ALPHA_MODES or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    return np.array(img)


@dataclasses.dataclass(frozen=True)
class RGBView:
    """An image as RGB, and the way back to the caller's type (`as_rgb`).

    rgb: [H, W, 3], uint8, uint16 or float32 in [0, 1].
    restore(rgb_out, changed): rgb_out [H, W, 3] in rgb's dtype, changed bool [H, W] -> the
      caller's type, shape, dtype (PIL: mode and info); outside `changed` the caller's own
      pixels, alpha untouched.
    """

    rgb: np.ndarray
    restore: Callable[[np.ndarray, np.ndarray], Any]


def check_float_range(pixels: np.ndarray) -> None:
    """ValueError when float pixels' finite values lie outside [0, 1] by more than
    `FLOAT_RANGE_TOLERANCE` (non-finite values are the caller's to judge: `InpainterBase`
    accepts them inside the hole only)."""
    finite = pixels[np.isfinite(pixels)]
    if not finite.size:
        return
    low, high = float(finite.min()), float(finite.max())
    if low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
        hint = " (0-255 values: divide the image by 255, or pass it as uint8)" if high > 1 else ""
        raise ValueError(
            f"float pixels must be in [0, 1], but this image holds {low:g} to {high:g}{hint}"
        )


def _array_rgb(image: np.ndarray) -> RGBView:
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image must be uint8, uint16 or float in [0, 1], got dtype {image.dtype}")
    if image.ndim == 2:
        planes, squeeze = image[..., None], True
    elif image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
        planes, squeeze = image, False
    else:
        raise ValueError(f"image must be [H, W] or [H, W, 1|2|3|4], got shape {image.shape}")
    colour, alpha = _colour_and_alpha(planes)
    if image.dtype not in (np.uint8, np.uint16):
        check_float_range(colour)
    work = colour if image.dtype in (np.uint8, np.uint16) else colour.astype(np.float32)
    if colour.shape[-1] == 1:
        work = np.repeat(work, 3, axis=-1)

    def restore(rgb: np.ndarray, changed: np.ndarray) -> np.ndarray:
        new = rgb if colour.shape[-1] == 3 else _luma(rgb)[..., None]
        out = np.where(changed[..., None], new.astype(image.dtype), colour)
        if alpha.shape[-1]:
            out = np.concatenate([out, alpha], axis=-1)
        return out[..., 0] if squeeze else out

    return RGBView(np.ascontiguousarray(work), restore)


def _sixteen_bit_image(values: np.ndarray, mode: str) -> Image.Image:
    """uint16 [H, W] as a PIL image of `mode` ("I;16", "I;16L", "I;16B", "I;16N", "I")."""
    if mode == "I":
        return Image.fromarray(values.astype(np.int32))
    byte_order = {"I;16B": ">u2", "I;16N": "=u2"}.get(mode, "<u2")
    height, width = values.shape
    return Image.frombytes(mode, (width, height), values.astype(byte_order).tobytes())


def _pil_rgb(image: Image.Image) -> RGBView:
    mode, info = image.mode, dict(image.info)
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"a mode {mode} image must hold 16-bit values (0-65535), got "
                f"{values.min()}..{values.max()}"
            )
    if mode == "F":
        planes = np.asarray(image, np.float32)  # float gray: [0, 1], as a float array
    elif mode in _ARRAY_MODES:
        planes = np.asarray(image)
    else:
        planes = pil_planes(image, keep_16_bit=True)
    view = _array_rgb(planes)

    def restore(rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
        pixels = view.restore(rgb, changed)
        if mode in SIXTEEN_BIT_MODES:
            out = _sixteen_bit_image(pixels, mode)
        elif mode == "F":
            out = Image.fromarray(pixels.astype(np.float32))
        elif mode in CONVERTED_MODES:  # the fill converted, the known pixels the input's own
            where = Image.fromarray(changed.astype(np.uint8) * np.uint8(255))
            out = Image.composite(Image.fromarray(pixels).convert(mode), image, where)
        else:
            out = Image.fromarray(pixels)  # L, LA, RGB or RGBA, as `planes`
        out.info.update(info)
        return out

    return RGBView(view.rgb, restore)


def as_rgb(image: Any) -> RGBView:
    """RGB [H, W, 3] of a caller's image, and the way back to its type.

    image: np.ndarray [H, W] / [H, W, 1|2|3|4] (gray, gray + alpha, RGB, RGBA) of uint8, uint16
      or float in [0, 1] (float becomes float32; `check_float_range`), or a PIL image of any
      mode. The way back gives the input's mode for L, LA, RGB, RGBA, "I;16" / "I" (kept at
      16 bits), "F" (float gray in [0, 1], as a float array) and `CONVERTED_MODES` (1, CMYK,
      YCbCr, LAB, HSV: the changed pixels converted from RGB by Pillow, the others the
      input's own); a palette image ("P", "PA") and the remaining modes come back as RGB, or
      RGBA when they carry transparency.

    Raises:
      ValueError: float pixels (an array or mode "F") outside [0, 1] (`check_float_range`).
    """
    if isinstance(image, Image.Image):
        return _pil_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_rgb(image)
    raise TypeError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")


# ----------------------------------------------------------------------------------------------
# Masks


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


def _array_mask_values(mask: np.ndarray) -> np.ndarray:
    values = _array_mask_scale(mask)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 2:
        return values
    if values.ndim != 3 or values.shape[-1] not in (2, 3, 4):
        raise ValueError(f"mask must be [H, W] or [H, W, 1|2|3|4], got shape {mask.shape}")
    colour, alpha = _colour_and_alpha(values)
    if alpha.shape[-1] and (colour == colour.reshape(-1, colour.shape[-1])[0]).all():
        return alpha[..., 0]  # a painted layer: constant colour, the strokes in the alpha
    if colour.shape[-1] == 1:
        return colour[..., 0]
    if mask.dtype == np.uint8:
        return np.asarray(Image.fromarray(mask[..., :3], "RGB").convert("L"), np.float32)
    return (colour @ LUMA_WEIGHTS).astype(np.float32)


def mask_values(mask: Any) -> np.ndarray:
    """A mask's grey values on the 0-255 scale: float32 [H, W] (255 = hole).

    mask: a PIL image (any mode) or an array [H, W] / [H, W, 1|2|3|4] of bool (True = 255),
      uint8, uint16 (divided by 257) or float in [0, 1] (times 255). Colour counts through its
      luminance; a mask with alpha whose colour is constant is a painted layer, and its alpha
      channel is the mask.

    Raises:
      ValueError: a NaN or infinite value (neither hole nor known), or an unsupported shape.
    """
    values = _mask_values(mask)
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ValueError(
            f"the mask has {bad} NaN or infinite value(s), which are neither hole nor known; "
            "give a mask of finite values (float: 0 = known, 1 = hole)"
        )
    return values


def _mask_values(mask: Any) -> np.ndarray:
    if isinstance(mask, Image.Image):
        if mask.mode == "P":
            mask = mask.convert("RGBA" if "transparency" in mask.info else "L")
        if mask.mode == "1":
            return np.asarray(mask, np.float32) * 255.0
        if mask.mode in SIXTEEN_BIT_MODES:
            return np.asarray(mask).astype(np.float32) / 257.0
        if mask.mode == "F":
            return np.asarray(mask, np.float32)
        if mask.mode in ALPHA_MODES:
            return _array_mask_values(np.asarray(mask.convert("RGBA")))
        return np.asarray(mask.convert("L"), np.float32)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array or a PIL image, got {type(mask).__name__}")
    return _array_mask_values(mask)


# ----------------------------------------------------------------------------------------------
# Reading files


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """A decoded image, upright (EXIF orientation applied).

    Attributes:
      rgb: uint8 `[H, W, 3]`, or uint16 for a 16-bit source read with `keep_16_bit`.
      alpha: `[H, W]` of rgb's dtype (255 / 65535 = opaque) if the file had transparency,
        else None.
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
    def bit_depth(self) -> int:
        """16 for uint16 pixels, else 8."""
        return 16 if self.rgb.dtype == np.uint16 else 8

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def is_image_file(path: Path) -> bool:
    """A file with one of IMAGE_EXTENSIONS."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name, without the `*_mask.*` files."""
    return sorted(
        p for p in Path(folder).iterdir() if is_image_file(p) and not p.stem.endswith(MASK_SUFFIX)
    )


def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", "<stream>")


def _open_oriented(source: str | os.PathLike | bytes, label: str) -> tuple[Image.Image, int]:
    """The fully decoded image (so truncation is caught here), upright, and the EXIF
    orientation (1-8) that was applied to make it so."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as img:
            img.load()
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
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
    return img, orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _exif_without_orientation(img: Image.Image) -> bytes | None:
    raw = img.info.get("exif")
    if not raw:
        return None
    exif = img.getexif()
    if ExifTags.Base.Orientation not in exif:
        return raw
    del exif[ExifTags.Base.Orientation]
    return exif.tobytes()


def _source_bytes(source: str | os.PathLike | bytes, label: str, size: int = -1) -> bytes:
    """The encoded data of a path or bytes (the first `size` bytes if size >= 0)."""
    if isinstance(source, bytes):
        return source if size < 0 else source[:size]
    try:
        with open(source, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise ImageReadError(f"{label}: cannot read the file ({e})") from e


def _is_16_bit_png(source: str | os.PathLike | bytes, label: str) -> bool:
    """Whether the IHDR chunk of a PNG says 16 bits per sample."""
    header = _source_bytes(source, label, _PNG_IHDR_END)
    is_png = header.startswith(_PNG_SIGNATURE) and header[12:16] == b"IHDR"
    return len(header) >= _PNG_IHDR_END and is_png and header[24] == 16


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Applies EXIF orientation 1-8 to stored pixels `[H, W, ...]` (as ImageOps.exif_transpose)."""
    upright = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # flipped
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # turn 90 clockwise to view
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # transversed
        8: lambda a: np.rot90(a, 1),  # turn 90 counter-clockwise to view
    }[orientation]
    return np.ascontiguousarray(upright(pixels))


def _decode_16_bit_png(data: bytes, orientation: int, label: str) -> np.ndarray:
    """uint16 planes of a 16-bit PNG, upright: gray [H, W], RGB [H, W, 3] or RGBA [H, W, 4];
    through OpenCV (Pillow reduces 16-bit colour to 8 bits)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16:
        raise ImageReadError(f"{label}: OpenCV cannot decode this 16-bit PNG")
    pixels = _orient(pixels, orientation)
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[-1] == 4:
        return np.ascontiguousarray(pixels[..., [2, 1, 0, 3]])  # BGRA -> RGBA
    return np.ascontiguousarray(pixels[..., ::-1])  # BGR -> RGB


def _decode(source: ImageSource, label: str, keep_16_bit: bool) -> tuple[np.ndarray, Image.Image]:
    """The upright planes of an image file (`pil_planes`'s layout; uint16 only with
    `keep_16_bit`) and the opened image, for its metadata."""
    if not isinstance(source, (str, os.PathLike, bytes)):
        source = source.read()  # a stream may have to be decoded twice (16-bit PNG)
    img, orientation = _open_oriented(source, label)
    if img.format == "PNG" and _is_16_bit_png(source, label):
        planes = _decode_16_bit_png(_source_bytes(source, label), orientation, label)
        return (planes if keep_16_bit else to_uint8(planes)), img
    try:
        return pil_planes(img, keep_16_bit=keep_16_bit), img
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{label}: cannot convert mode {img.mode} to RGB ({e})") from e


def load_image(
    source: ImageSource, *, name: str | None = None, keep_16_bit: bool = False
) -> LoadedImage:
    """Decodes an image file, bytes or stream into upright RGB plus alpha and metadata.

    Args:
      source: a path, the encoded bytes, or a binary stream.
      name: how to refer to the image in error messages (defaults to the path).
      keep_16_bit: return uint16 pixels (and alpha) for a 16-bit source instead of uint8.

    Raises:
      ImageReadError: missing, truncated, corrupt or unrecognised data.
    """
    planes, img = _decode(source, _describe(source, name), keep_16_bit)
    colour, alpha = _colour_and_alpha(planes if planes.ndim == 3 else planes[..., None])
    return LoadedImage(
        rgb=np.repeat(colour, 3, axis=-1)
        if colour.shape[-1] == 1
        else np.ascontiguousarray(colour),
        alpha=np.ascontiguousarray(alpha[..., 0]) if alpha.shape[-1] else None,
        exif=_exif_without_orientation(img),
        icc_profile=None if img.mode == "CMYK" else img.info.get("icc_profile") or None,
        format=img.format or "",
    )


def read_rgb(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Upright uint8 RGB `[H, W, 3]` of an image (alpha and metadata dropped)."""
    return load_image(source, name=name).rgb


def read_mask(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """A mask file's pixels as decoded, upright: gray [H, W], or [H, W, 2|3|4] gray + alpha,
    RGB or RGBA; uint8, or uint16 for a 16-bit file. `mask_values` reads them.

    Raises:
      ImageReadError: missing, truncated, corrupt or unrecognised data.
    """
    return _decode(source, _describe(source, name), keep_16_bit=True)[0]


def load_mask(
    source: ImageSource, *, threshold: float = 127, invert: bool = False, name: str | None = None
) -> np.ndarray:
    """Reads a mask file as bool `[H, W]`, True = hole.

    Grey values by `mask_values` (luminance for colour, 16 bits scaled to 0-255, the alpha of
    a painted layer); pixels brighter than `threshold` (0-255 scale) are holes; `invert` swaps
    the polarity for masks that mark the known region white.

    Raises:
      ImageReadError: missing, truncated, corrupt or unrecognised data.
    """
    hole = mask_values(read_mask(source, name=name)) > threshold
    return ~hole if invert else hole


# ----------------------------------------------------------------------------------------------
# Writing files


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype in (np.uint8, np.uint16) or np.issubdtype(array.dtype, np.floating):
        return convert_pixels(array, np.uint8)
    raise ValueError(f"{what} must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}.")


def _as_uint16(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint16:
        return array
    return convert_pixels(_as_uint8(array, "alpha"), np.uint16)


def _write_format(path: Path) -> str:
    file_format = _WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(
            f"{path}: cannot tell the image format from the extension {path.suffix!r}; "
            f"use one of {sorted(_WRITE_FORMATS)}."
        )
    return file_format


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF  # without copying the data
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _metadata_chunks(exif: bytes | None, icc_profile: bytes | None) -> bytes:
    """iCCP and eXIf chunks (both must precede the image data)."""
    chunks = b""
    if icc_profile:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile))
    if exif:
        chunks += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    return chunks


def _encode_8_bit_png(
    pixels: np.ndarray, exif: bytes | None, icc_profile: bytes | None, compression: int
) -> bytes:
    """An 8-bit RGB or RGBA PNG whose rows are filtered "Up" (each the byte-wise difference
    from the row above) and deflated at zlib level `compression`. Pillow tries every filter on
    every row: at level 1 it took 0.22-0.24 s for a 2560x1600 photo against 0.10-0.15 s here,
    for a file 4 % smaller (`benchmarks.one_photo`)."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 2  # the filter type, Up
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines it
    colour_type = {3: 2, 4: 6}[channels]  # truecolour, truecolour with alpha
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _metadata_chunks(exif, icc_profile),
            _png_chunk(b"IDAT", zlib.compress(filtered, compression)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _encode_16_bit_png(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    exif: bytes | None,
    icc_profile: bytes | None,
    compression: int,
) -> bytes:
    """A 16-bit RGB(A) PNG through OpenCV (Pillow cannot write one), with the ICC profile and
    EXIF inserted as iCCP and eXIf chunks after IHDR (both must precede the image data)."""
    pixels = rgb[..., ::-1] if alpha is None else np.dstack([rgb[..., ::-1], alpha])
    ok, encoded = cv2.imencode(
        ".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, compression]
    )
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} 16-bit PNG.")
    data = encoded.tobytes()
    return data[:_PNG_IHDR_END] + _metadata_chunks(exif, icc_profile) + data[_PNG_IHDR_END:]


def encode_image(
    rgb: np.ndarray,
    file_format: str,
    *,
    alpha: np.ndarray | None = None,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
    lossless_webp: bool = True,
    png_compression: int = PNG_COMPRESSION,
) -> bytes:
    """Encodes RGB `[H, W, 3]` (uint8, uint16 or float in [0, 1]) as "PNG", "JPEG" or "WEBP".

    uint16 pixels make a 16-bit PNG; JPEG and WebP hold 8 bits, so for them 16-bit pixels are
    rounded to 8 bits with a warning. Alpha `[H, W]` is kept for PNG and WebP and dropped (with
    a warning) for JPEG. WebP is lossless unless `lossless_webp` is off (then lossy at
    `quality`); lossless WebP keeps the colour of fully transparent pixels too. JPEG at
    quality >= 90 uses 4:4:4 chroma so that inpainted detail is not blurred by subsampling.
    PNG is compressed at zlib level `png_compression` (0-9).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape [H, W, 3], got {rgb.shape}.")
    if alpha is not None and np.shape(alpha) != rgb.shape[:2]:
        raise ValueError(f"alpha shape {np.shape(alpha)} does not match the image {rgb.shape[:2]}.")
    if alpha is not None and file_format not in _ALPHA_FORMATS:
        logging.warning("%s cannot store transparency; the alpha channel is dropped.", file_format)
        alpha = None
    if rgb.dtype == np.uint16:
        if file_format == "PNG":
            return _encode_16_bit_png(
                rgb,
                None if alpha is None else _as_uint16(alpha),
                exif,
                icc_profile,
                png_compression,
            )
        logging.warning(
            "%s holds 8 bits per channel: the 16-bit image is rounded to 8 bits (write PNG to "
            "keep 16 bits).",
            file_format,
        )
    rgb = _as_uint8(rgb, "rgb")
    if file_format == "PNG":
        pixels = rgb if alpha is None else np.dstack([rgb, _as_uint8(alpha, "alpha")])
        return _encode_8_bit_png(np.ascontiguousarray(pixels), exif, icc_profile, png_compression)
    img = Image.fromarray(rgb, "RGB")
    if alpha is not None:
        img = Image.fromarray(np.dstack([rgb, _as_uint8(alpha, "alpha")]), "RGBA")
    options: dict = {}
    if exif:
        options["exif"] = exif
    if icc_profile:
        options["icc_profile"] = icc_profile
    if file_format == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif file_format == "WEBP":
        options.update(quality=quality, lossless=lossless_webp, exact=lossless_webp)
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
    lossless_webp: bool = True,
    png_compression: int = PNG_COMPRESSION,
) -> None:
    """Writes RGB `[H, W, 3]` (uint8, uint16 or float in [0, 1]) atomically; format from the
    extension.

    `.png` (8 or 16 bit, as the pixels), `.jpg`/`.jpeg` and `.webp` (8 bit; lossless unless
    `lossless_webp` is off) are supported; alpha, EXIF and ICC are written where the format
    allows (`encode_image`).
    """
    path = Path(path)
    data = encode_image(
        rgb,
        _write_format(path),
        alpha=alpha,
        exif=exif,
        icc_profile=icc_profile,
        quality=quality,
        lossless_webp=lossless_webp,
        png_compression=png_compression,
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
