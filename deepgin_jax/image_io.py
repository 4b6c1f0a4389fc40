"""Reading and writing photos and masks: every pixel format a user may hand us becomes RGB.

`load_image` accepts JPEG, PNG (8 and 16 bit), WebP and the other formats Pillow reads, in any
mode (grayscale, grayscale+alpha, palette, RGBA, CMYK, 16-bit), applies the EXIF orientation,
and returns the RGB pixels with the alpha channel, EXIF and ICC profile kept apart so that
`save_image` can write them back. Pixels are uint8, or with `keep_16_bit=True` uint16 for a
16-bit source (a 16-bit PNG of any colour type, or a 16-bit grayscale image of another format).
Pillow reads 16-bit colour PNGs as 8 bit, so every 16-bit PNG is decoded with OpenCV (reduced
to 8 bits by rounding v / 257 unless 16 bits are kept). Unreadable input raises
`ImageReadError`, which names the file and the reason.

`save_image` writes uint8 pixels as 8-bit and uint16 pixels as 16-bit PNG (with OpenCV; the ICC
profile and EXIF are added as PNG chunks). JPEG and WebP hold 8 bits only: 16-bit pixels are
rounded to 8 bits for them, with a warning. WebP is written losslessly by default (every pixel
kept, also the colour under transparent pixels); JPEG is always lossy.

Masks on disk are 8-bit PNG with 255 = hole; `load_mask` also accepts RGB, 16-bit and painted
alpha layers and binarises them (value > threshold = hole).
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from absl import logging
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deepgin_jax.atomic import atomic_write

ImageSource = str | os.PathLike | bytes | BinaryIO

# Extension -> Pillow format name for writing.
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_ALPHA_FORMATS = frozenset({"PNG", "WEBP"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR_END = 33  # signature (8) + IHDR length, type, 13 data bytes and CRC (25)
_PNG_COMPRESSION = 6  # zlib level, Pillow's default


class ImageReadError(ValueError):
    """An image or mask file that cannot be decoded; the message names the file and the reason."""


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
    return _open_oriented(source, label)[0]


def _open_oriented(source: ImageSource, label: str) -> tuple[Image.Image, int]:
    """`_open_decoded`, and the EXIF orientation (1-8) that was applied to make it upright."""
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


def _sixteen_bit_to_uint8(img: Image.Image) -> np.ndarray:
    values = np.asarray(img).astype(np.float64)
    return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Rounds 16-bit levels to the nearest 8-bit level (v / 257; 8-bit v * 257 comes back)."""
    return np.rint(values / 257.0).astype(np.uint8)


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's IHDR chunk, or None for data that is not a PNG."""
    if len(data) < _PNG_IHDR_END or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24]


def _source_bytes(source: str | os.PathLike | bytes, label: str, size: int = -1) -> bytes:
    """The encoded data of a path or bytes (the first `size` bytes if size >= 0)."""
    if isinstance(source, bytes):
        return source if size < 0 else source[:size]
    try:
        with open(source, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise ImageReadError(f"{label}: cannot read the file ({e})") from e


def _png_header(source: str | os.PathLike | bytes, label: str) -> bytes:
    return _source_bytes(source, label, _PNG_IHDR_END)


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


def _decode_16_bit_png(
    data: bytes, orientation: int, label: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint16 RGB `[H, W, 3]` and alpha `[H, W]` (or None) of a 16-bit PNG, upright, through
    OpenCV (Pillow reduces 16-bit colour to 8 bits)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16:
        raise ImageReadError(f"{label}: OpenCV cannot decode this 16-bit PNG")
    pixels = _orient(pixels, orientation)
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=-1), None
    if pixels.shape[-1] == 4:
        return np.ascontiguousarray(pixels[..., 2::-1]), np.ascontiguousarray(pixels[..., 3])
    return np.ascontiguousarray(pixels[..., ::-1]), None  # BGR -> RGB


def _split_rgb_alpha(
    img: Image.Image, keep_16_bit: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 `[H, W, 3]` colour and optional uint8 `[H, W]` alpha for any Pillow mode (uint16
    colour for 16-bit grayscale when `keep_16_bit`)."""
    mode = img.mode
    if keep_16_bit and mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return np.repeat(values.astype(np.uint16)[..., None], 3, axis=-1), None
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
    label = _describe(source, name)
    if not isinstance(source, (str, os.PathLike, bytes)):
        source = source.read()  # a stream may have to be decoded twice (16-bit PNG)
    img, orientation = _open_oriented(source, label)
    if img.format == "PNG" and _png_bit_depth(_png_header(source, label)) == 16:
        rgb, alpha = _decode_16_bit_png(_source_bytes(source, label), orientation, label)
        if not keep_16_bit:
            rgb = _uint16_to_uint8(rgb)
            alpha = None if alpha is None else _uint16_to_uint8(alpha)
    else:
        try:
            rgb, alpha = _split_rgb_alpha(img, keep_16_bit)
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
    if array.dtype == np.uint16:
        return _uint16_to_uint8(array)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    raise ValueError(f"{what} must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}.")


def _as_uint16(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint16:
        return array
    return _as_uint8(array, "alpha").astype(np.uint16) * np.uint16(257)


def _write_format(path: Path) -> str:
    file_format = _WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(
            f"{path}: cannot tell the image format from the extension {path.suffix!r}; "
            f"use one of {sorted(_WRITE_FORMATS)}."
        )
    return file_format


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _encode_16_bit_png(
    rgb: np.ndarray, alpha: np.ndarray | None, exif: bytes | None, icc_profile: bytes | None
) -> bytes:
    """A 16-bit RGB(A) PNG through OpenCV (Pillow cannot write one), with the ICC profile and
    EXIF inserted as iCCP and eXIf chunks after IHDR (both must precede the image data)."""
    pixels = rgb[..., ::-1] if alpha is None else np.dstack([rgb[..., ::-1], alpha])
    ok, encoded = cv2.imencode(
        ".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION]
    )
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} 16-bit PNG.")
    data = encoded.tobytes()
    chunks = b""
    if icc_profile:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile))
    if exif:
        chunks += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    return data[:_PNG_IHDR_END] + chunks + data[_PNG_IHDR_END:]


def encode_image(
    rgb: np.ndarray,
    file_format: str,
    *,
    alpha: np.ndarray | None = None,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
    lossless_webp: bool = True,
) -> bytes:
    """Encodes RGB `[H, W, 3]` (uint8, uint16 or float in [0, 1]) as "PNG", "JPEG" or "WEBP".

    uint16 pixels make a 16-bit PNG; JPEG and WebP hold 8 bits, so for them 16-bit pixels are
    rounded to 8 bits with a warning. Alpha `[H, W]` is kept for PNG and WebP and dropped (with
    a warning) for JPEG. WebP is lossless unless `lossless_webp` is off (then lossy at
    `quality`); lossless WebP keeps the colour of fully transparent pixels too. JPEG at
    quality >= 90 uses 4:4:4 chroma so that inpainted detail is not blurred by subsampling.
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
                rgb, None if alpha is None else _as_uint16(alpha), exif, icc_profile
            )
        logging.warning(
            "%s holds 8 bits per channel: the 16-bit image is rounded to 8 bits (write PNG to "
            "keep 16 bits).",
            file_format,
        )
    rgb = _as_uint8(rgb, "rgb")
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
