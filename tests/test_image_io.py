"""Image and mask reading/writing across the pixel formats users hand us."""

from __future__ import annotations

import io
import logging
import zlib

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms

from deepgin_jax import image_io


@pytest.fixture
def rgb() -> np.ndarray:
    """A 24x40 RGB test card: smooth ramps plus a red block in the top-left corner."""
    rows, cols = np.mgrid[0:24, 0:40]
    image = np.stack([rows * 10, cols * 6, 255 - cols * 6], axis=-1).astype(np.uint8)
    image[:6, :6] = (255, 0, 0)
    return image


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _write(path, image: Image.Image, **options):
    image.save(path, **options)
    return path


def test_jpeg_rgb_roundtrip(tmp_path, rgb):
    path = _write(tmp_path / "a.jpg", Image.fromarray(rgb), quality=98, subsampling=0)
    loaded = image_io.load_image(path)
    assert loaded.rgb.shape == (24, 40, 3) and loaded.rgb.dtype == np.uint8
    assert loaded.alpha is None and loaded.format == "JPEG"
    assert np.abs(loaded.rgb.astype(int) - rgb).mean() < 3
    np.testing.assert_array_equal(image_io.read_rgb(path), loaded.rgb)


def test_png_16_bit_grayscale_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], np.uint16)
    path = _write(tmp_path / "g16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    loaded = image_io.load_image(path)
    expected = np.rint(values / 257).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(loaded.rgb[..., channel], expected)


def test_png_16_bit_rgb(tmp_path, rgb):
    deep = (rgb.astype(np.uint16) * 257 + (rgb < 255) * 100).astype(np.uint16)  # noisy low bytes
    cv2.imwrite(str(tmp_path / "c16.png"), deep[..., ::-1])  # OpenCV writes BGR
    loaded = image_io.load_image(tmp_path / "c16.png")
    assert loaded.rgb.dtype == np.uint8 and loaded.bit_depth == 8
    np.testing.assert_array_equal(loaded.rgb, np.rint(deep / 257).astype(np.uint8))
    kept = image_io.load_image(tmp_path / "c16.png", keep_16_bit=True)
    assert kept.bit_depth == 16
    np.testing.assert_array_equal(kept.rgb, deep)


def sixteen_bit_card(rgb: np.ndarray) -> np.ndarray:
    """The test card at 16 bits, with low bytes that an 8-bit round trip would lose."""
    noise = np.random.default_rng(0).integers(0, 257, rgb.shape)
    return (rgb.astype(np.int64) * 257 + noise).clip(0, 65535).astype(np.uint16)


@pytest.mark.parametrize("kind", ["gray", "rgb", "rgba", "gray_alpha"])
def test_16_bit_png_round_trips_exactly(tmp_path, rgb, kind):
    deep = sixteen_bit_card(rgb)
    alpha = deep[..., 1][::-1].copy()
    source = tmp_path / "in.png"
    if kind == "gray":
        Image.fromarray(deep[..., 0]).save(source)
        expected_rgb, expected_alpha = np.repeat(deep[..., :1], 3, axis=-1), None
    elif kind == "rgb":
        cv2.imwrite(str(source), deep[..., ::-1])
        expected_rgb, expected_alpha = deep, None
    elif kind == "rgba":
        cv2.imwrite(str(source), np.dstack([deep[..., ::-1], alpha]))
        expected_rgb, expected_alpha = deep, alpha
    else:
        source.write_bytes(_gray_alpha_png_16(deep[..., 0], alpha))
        expected_rgb, expected_alpha = np.repeat(deep[..., :1], 3, axis=-1), alpha
    loaded = image_io.load_image(source, keep_16_bit=True)
    assert loaded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(loaded.rgb, expected_rgb)
    np.testing.assert_array_equal(loaded.alpha, expected_alpha)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Kept"
    out = tmp_path / "out.png"
    profile = _srgb_profile()
    image_io.save_image(
        out, loaded.rgb, alpha=loaded.alpha, exif=exif.tobytes(), icc_profile=profile
    )
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written[..., 2::-1], expected_rgb)
    if expected_alpha is not None:
        np.testing.assert_array_equal(written[..., 3], expected_alpha)
    again = image_io.load_image(out, keep_16_bit=True)
    np.testing.assert_array_equal(again.rgb, expected_rgb)
    assert again.icc_profile == profile
    tags = Image.Exif()
    tags.load(again.exif)
    assert tags[ExifTags.Base.Make] == "Kept"


def _gray_alpha_png_16(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit grayscale + alpha PNG (colour type 4), which neither Pillow nor OpenCV writes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    height, width = gray.shape
    rows = np.dstack([gray, alpha]).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 4, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_png_exif_orientation_matches_pillow(tmp_path, rgb, orientation):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(rgb).save(tmp_path / "8.png", exif=exif.tobytes())
    deep = rgb.astype(np.uint16) * 257
    (tmp_path / "16.png").write_bytes(image_io.encode_image(deep, "PNG", exif=exif.tobytes()))
    upright = image_io.load_image(tmp_path / "8.png").rgb  # Pillow's exif_transpose
    loaded = image_io.load_image(tmp_path / "16.png", keep_16_bit=True)
    np.testing.assert_array_equal(loaded.rgb, upright.astype(np.uint16) * 257)
    np.testing.assert_array_equal(image_io.load_image(tmp_path / "16.png").rgb, upright)
    if loaded.exif:
        tags = Image.Exif()
        tags.load(loaded.exif)
        assert ExifTags.Base.Orientation not in tags


@pytest.mark.parametrize("extension", [".jpg", ".webp"])
def test_16_bit_into_an_8_bit_format_warns(tmp_path, rgb, extension, caplog):
    deep = sixteen_bit_card(rgb)
    with caplog.at_level(logging.WARNING, logger="absl"):
        image_io.save_image(tmp_path / f"x{extension}", deep)
    assert "rounded to 8 bits" in caplog.text
    loaded = image_io.load_image(tmp_path / f"x{extension}", keep_16_bit=True)
    assert loaded.rgb.dtype == np.uint8
    if extension == ".webp":
        np.testing.assert_array_equal(loaded.rgb, np.rint(deep / 257).astype(np.uint8))


def test_webp_is_lossless_by_default_even_under_transparency(tmp_path):
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # what lossy WebP changes most
    alpha = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    alpha[:, :10] = 0  # fully transparent: a plain lossless encoder may discard the colour
    image_io.save_image(tmp_path / "exact.webp", noise, alpha=alpha)
    loaded = image_io.load_image(tmp_path / "exact.webp")
    np.testing.assert_array_equal(loaded.rgb, noise)
    np.testing.assert_array_equal(loaded.alpha, alpha)
    image_io.save_image(tmp_path / "lossy.webp", noise, lossless_webp=False, quality=80)
    assert (image_io.read_rgb(tmp_path / "lossy.webp") != noise).any()


def test_grayscale_and_grayscale_alpha(tmp_path, rgb):
    gray = rgb[..., 1]
    loaded = image_io.load_image(_write(tmp_path / "l.png", Image.fromarray(gray)))
    for channel in range(3):
        np.testing.assert_array_equal(loaded.rgb[..., channel], gray)
    alpha = np.tile(np.arange(40, dtype=np.uint8) * 6, (24, 1))
    la = Image.fromarray(np.dstack([gray, alpha]), "LA")
    loaded = image_io.load_image(_write(tmp_path / "la.png", la))
    np.testing.assert_array_equal(loaded.alpha, alpha)
    np.testing.assert_array_equal(loaded.rgb[..., 0], gray)


def test_rgba_alpha_is_returned_separately(tmp_path, rgb):
    alpha = np.full((24, 40), 255, np.uint8)
    alpha[10:, 20:] = 0
    path = _write(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    loaded = image_io.load_image(path)
    np.testing.assert_array_equal(loaded.rgb, rgb)
    np.testing.assert_array_equal(loaded.alpha, alpha)


def test_palette_with_and_without_transparency(tmp_path, rgb):
    palette_image = Image.fromarray(rgb).quantize(16)
    loaded = image_io.load_image(_write(tmp_path / "p.png", palette_image))
    np.testing.assert_array_equal(loaded.rgb, np.asarray(palette_image.convert("RGB")))
    assert loaded.alpha is None
    transparent = _write(tmp_path / "pt.png", palette_image, transparency=0)
    loaded = image_io.load_image(transparent)
    indices = np.asarray(palette_image)
    np.testing.assert_array_equal(loaded.alpha == 0, indices == 0)


def test_cmyk_jpeg_becomes_rgb_without_its_profile(tmp_path, rgb):
    cmyk = Image.fromarray(rgb).convert("CMYK")
    path = _write(tmp_path / "cmyk.jpg", cmyk, quality=98, icc_profile=b"cmyk-profile")
    loaded = image_io.load_image(path)
    assert loaded.rgb.shape == (24, 40, 3)
    assert np.abs(loaded.rgb.astype(int) - rgb).mean() < 12
    assert loaded.icc_profile is None  # a CMYK profile does not describe the RGB pixels


def test_exif_orientation_is_applied_and_dropped(tmp_path, rgb):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: rotate 90 degrees clockwise to view
    exif[ExifTags.Base.Make] = "TestCam"
    path = _write(tmp_path / "rot.jpg", Image.fromarray(rgb), quality=98, exif=exif)
    loaded = image_io.load_image(path)
    assert loaded.rgb.shape == (40, 24, 3)
    # Upright = the stored pixels turned 90 degrees clockwise (red block now top right).
    assert np.abs(loaded.rgb.astype(int) - np.rot90(rgb, k=-1)).mean() < 3
    assert loaded.rgb[:5, -5:, 0].mean() > 240 and loaded.rgb[:5, -5:, 1:].mean() < 20
    tags = Image.Exif()
    tags.load(loaded.exif)
    assert ExifTags.Base.Orientation not in tags
    assert tags[ExifTags.Base.Make] == "TestCam"


def test_webp_and_bytes_and_stream_sources(tmp_path, rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "WEBP", lossless=True)
    data = buffer.getvalue()
    np.testing.assert_array_equal(image_io.read_rgb(data), rgb)
    np.testing.assert_array_equal(image_io.read_rgb(io.BytesIO(data)), rgb)
    assert image_io.load_image(data).format == "WEBP"


def test_truncated_jpeg_names_file_and_reason(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(image_io.ImageReadError, match=r"cut\.jpg.*truncated"):
        image_io.load_image(path)


def test_text_file_named_png_and_missing_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(image_io.ImageReadError, match=r"notes\.png.*not an image"):
        image_io.load_image(path)
    with pytest.raises(image_io.ImageReadError, match=r"absent\.jpg.*not found"):
        image_io.read_rgb(tmp_path / "absent.jpg")
    assert issubclass(image_io.ImageReadError, ValueError)


def test_load_mask_grayscale_threshold_and_invert(tmp_path):
    values = np.array([[0, 100, 127], [128, 200, 255]], np.uint8)
    path = _write(tmp_path / "m.png", Image.fromarray(values))
    hole = image_io.load_mask(path)
    assert hole.dtype == np.bool_
    np.testing.assert_array_equal(hole, values > 127)
    np.testing.assert_array_equal(image_io.load_mask(path, threshold=50), values > 50)
    np.testing.assert_array_equal(image_io.load_mask(path, invert=True), values <= 127)


def test_load_mask_rgb_uses_luminance(tmp_path):
    colours = np.zeros((2, 3, 3), np.uint8)
    colours[0, 0] = (255, 255, 255)
    colours[0, 1] = (0, 0, 255)  # luminance ~29: known
    colours[1, 2] = (0, 255, 0)  # luminance ~150: hole
    hole = image_io.load_mask(_write(tmp_path / "rgb.png", Image.fromarray(colours)))
    np.testing.assert_array_equal(hole, [[True, False, False], [False, False, True]])


def test_load_mask_painted_alpha_layer_and_coloured_rgba(tmp_path):
    alpha = np.zeros((8, 8), np.uint8)
    alpha[2:5, 3:7] = 255
    white_layer = np.dstack([np.full((8, 8, 3), 255, np.uint8), alpha])
    path = _write(tmp_path / "layer.png", Image.fromarray(white_layer, "RGBA"))
    np.testing.assert_array_equal(image_io.load_mask(path), alpha > 0)
    gray = np.zeros((8, 8), np.uint8)
    gray[1:3, 1:3] = 255
    opaque = np.dstack([gray, gray, gray, np.full((8, 8), 255, np.uint8)])
    path = _write(tmp_path / "opaque.png", Image.fromarray(opaque, "RGBA"))
    np.testing.assert_array_equal(image_io.load_mask(path), gray > 0)


def test_load_mask_16_bit(tmp_path):
    values = np.array([[0, 30000, 40000, 65535]], np.uint16)
    path = _write(tmp_path / "m16.png", Image.fromarray(values))
    np.testing.assert_array_equal(image_io.load_mask(path), [[False, False, True, True]])


def test_load_mask_16_bit_colour_keeps_every_bit_and_gray_alpha_layer(tmp_path):
    # 32700 / 257 = 127.2 is a hole; Pillow's 8-bit view of this PNG (127) would not be.
    values = np.array([[0, 32639, 32700, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "m16.png"), np.repeat(values[..., None], 3, axis=-1))
    np.testing.assert_array_equal(
        image_io.load_mask(tmp_path / "m16.png"), [[False, False, True, True]]
    )
    assert image_io.read_mask(tmp_path / "m16.png").dtype == np.uint16
    alpha = np.zeros((4, 5), np.uint8)
    alpha[1:3, 2:4] = 255
    layer = np.dstack([np.full((4, 5), 90, np.uint8), alpha])
    path = _write(tmp_path / "layer.png", Image.fromarray(layer, "LA"))
    np.testing.assert_array_equal(image_io.load_mask(path), alpha > 0)


def test_load_mask_unreadable(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(image_io.ImageReadError, match=r"bad\.png"):
        image_io.load_mask(tmp_path / "bad.png")


@pytest.mark.parametrize("extension", [".png", ".webp"])
def test_save_image_keeps_alpha_exif_icc(tmp_path, rgb, extension):
    alpha = np.full((24, 40), 200, np.uint8)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Kept"
    profile = _srgb_profile()
    path = tmp_path / f"out{extension}"
    image_io.save_image(path, rgb, alpha=alpha, exif=exif.tobytes(), icc_profile=profile)
    loaded = image_io.load_image(path)
    np.testing.assert_array_equal(loaded.alpha, alpha)
    if extension == ".png":
        np.testing.assert_array_equal(loaded.rgb, rgb)
    assert loaded.icc_profile == profile
    tags = Image.Exif()
    tags.load(loaded.exif)
    assert tags[ExifTags.Base.Make] == "Kept"


def test_save_image_jpeg_drops_alpha_keeps_metadata(tmp_path, rgb):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Kept"
    path = tmp_path / "out.jpeg"
    image_io.save_image(
        path, rgb, alpha=np.zeros((24, 40), np.uint8), exif=exif.tobytes(), icc_profile=b"icc"
    )
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.format == "JPEG"
        assert img.info["icc_profile"] == b"icc"
        assert img.getexif()[ExifTags.Base.Make] == "Kept"
    assert np.abs(image_io.read_rgb(path).astype(int) - rgb).mean() < 3


def test_save_image_float_input_replaces_atomically(tmp_path, rgb):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")
    image_io.save_image(path, rgb.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(image_io.read_rgb(path), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_save_image_rejects_bad_input(tmp_path, rgb):
    with pytest.raises(ValueError, match="extension"):
        image_io.save_image(tmp_path / "x.gif", rgb)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        image_io.save_image(tmp_path / "x.png", rgb[..., 0])
    with pytest.raises(ValueError, match="alpha shape"):
        image_io.save_image(tmp_path / "x.png", rgb, alpha=np.zeros((2, 2), np.uint8))
    assert not (tmp_path / "x.png").exists()


def test_save_mask_writes_binary_png(tmp_path):
    mask = np.zeros((5, 7, 1), np.float32)
    mask[1:3, 2:6] = 1.0
    image_io.save_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "L" and img.format == "PNG"
        pixels = np.asarray(img)
    assert set(np.unique(pixels)) == {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask[..., 0] > 0)
    np.testing.assert_array_equal(image_io.load_mask(tmp_path / "m.png"), mask[..., 0] > 0)
    with pytest.raises(ValueError, match="PNG"):
        image_io.save_mask(tmp_path / "m.jpg", mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_compression_changes_the_size_not_the_pixels(dtype):
    rows = np.linspace(0, 1, 96)[:, None, None] * np.linspace(0.5, 1, 128)[None, :, None]
    smooth = np.broadcast_to(rows, (96, 128, 3)) * np.iinfo(dtype).max
    pixels = (smooth + np.random.default_rng(0).integers(0, 3, smooth.shape)).astype(dtype)
    encoded = {
        level: image_io.encode_image(pixels, "PNG", png_compression=level) for level in (1, 9)
    }
    assert len(encoded[9]) < len(encoded[1])
    assert image_io.encode_image(pixels, "PNG") == encoded[image_io.PNG_COMPRESSION]
    for data in encoded.values():
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
        np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("with_alpha", [False, True])
def test_8_bit_png_keeps_pixels_alpha_exif_and_profile(tmp_path, rgb, with_alpha):
    rng = np.random.default_rng(5)
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8) if with_alpha else None
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Kept"
    profile = _srgb_profile()
    out = tmp_path / "out.png"
    image_io.save_image(out, rgb, alpha=alpha, exif=exif.tobytes(), icc_profile=profile)
    with Image.open(out) as img:
        img.verify()  # every chunk's CRC and the stream's end
    with Image.open(out) as img:
        assert img.mode == ("RGBA" if with_alpha else "RGB")
        np.testing.assert_array_equal(np.asarray(img)[..., :3], rgb)
        if with_alpha:
            np.testing.assert_array_equal(np.asarray(img)[..., 3], alpha)
        assert img.info["icc_profile"] == profile
        assert img.getexif()[ExifTags.Base.Make] == "Kept"
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written[..., 2::-1], rgb)
