"""`python -m deepgin_jax.inpaint`: matching images to masks, formats and metadata, mask options,
bad files, existing outputs. Runs in-process with the tiny generator on 53x37 images (one
compiled shape, shared with test_inference)."""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from absl import flags
from PIL import Image, ImageCms

from deepgin_jax import cli, image_io, inference, inpaint, shipped
from deepgin_jax.inference import Inpainter
from tests.inpainting_helpers import tiny_checkpoint, tiny_shipped

HEIGHT, WIDTH = 37, 53
MAKE = 0x010F
ORIENTATION = 0x0112


@pytest.fixture(scope="module", autouse=True)
def blas_limits() -> Iterator[list[None]]:
    """The runs' calls of `cli.one_blas_thread`, which is not run here: it would limit the
    whole test process (the test after this runs it in a process of its own)."""
    calls: list[None] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "one_blas_thread", lambda: calls.append(None))
        yield calls


def test_inference_commands_limit_blas_threads_and_huge_page_advice():
    # NumPy's OpenBLAS is loaded before the limit, SciPy's after it.
    code = (
        "import os, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from deepgin_jax import cli\n"
        "blas = [i for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "assert len(blas) == 1, blas\n"
        "assert os.cpu_count() == 1 or blas[0]['num_threads'] > 1, blas\n"
        "cli.one_blas_thread()\n"
        "import scipy.linalg, scipy.sparse.linalg\n"
        "print([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'])\n"
        "from numpy._core import multiarray\n"
        "cli.no_huge_page_advice()\n"
        "print(multiarray._set_madvise_hugepage(True))\n"  # returns the setting it replaces
    )
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["[1,", "1]", "False"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")
@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_freed_memory_spares_a_second_large_array_its_page_faults(reuse):
    code = (
        "import resource, numpy\n"
        "from deepgin_jax import cli\n"
        "cli.no_huge_page_advice()\n"
        f"assert {reuse} is False or cli.reuse_freed_memory()\n"
        "first = numpy.ones(1 << 23); del first\n"  # 64 MiB: its own mapping by default
        "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "second = numpy.ones(1 << 23)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    faults = int(result.stdout)
    # 16,384 pages of 4 KiB when the second array is new memory; none when it reuses the first's.
    assert faults < 100 if reuse else faults > 10_000


@pytest.mark.parametrize("kept", [0, 1 << 31])
def test_reuse_freed_memory_refuses_what_mallopt_cannot_take(kept):
    with pytest.raises(ValueError, match=f"kept={kept}: mallopt takes a C int"):
        cli.reuse_freed_memory(kept)


def run_cli(*args: str) -> int:
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", f"--checkpoint={tiny_checkpoint()}", *args])
    return inpaint.run(flag_values)


def photo(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 220, width)[None, :, None] * rng.random(3)
    return np.clip(ramp + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)


def hole_mask(seed: int) -> np.ndarray:
    """uint8 [37, 53], 255 = hole: a block at a seed-dependent place."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    top, left = 4 + seed % 10, 6 + (3 * seed) % 20
    mask[top : top + 12, left : left + 18] = 255
    return mask


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of images in every supported form, a folder of masks named by the rules, one
    corrupt image and one image without a mask."""
    root = tmp_path_factory.mktemp("cli")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(photo(0)).save(images / "a.png")
    Image.fromarray(hole_mask(0)).save(masks / "a.png")  # same stem
    # JPEG stored on its side with EXIF orientation 6, a Make tag and an ICC profile.
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "deepgin-test"
    Image.fromarray(np.rot90(photo(1))).save(
        images / "b.jpg", exif=exif.tobytes(), icc_profile=srgb_profile(), quality=95
    )
    Image.fromarray(hole_mask(1)).save(masks / "b_mask.png")  # <stem>_mask
    rgba = np.dstack([photo(2), np.linspace(0, 255, WIDTH, dtype=np.uint8)[None].repeat(HEIGHT, 0)])
    Image.fromarray(rgba, "RGBA").save(images / "c.png")
    Image.fromarray(hole_mask(2)).save(masks / "c.png")
    Image.fromarray(photo(3)[..., 0]).save(images / "d.png")  # grayscale
    Image.fromarray(hole_mask(3)).save(masks / "d.png")
    sixteen = (photo(4)[..., 1].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(images / "e.png")  # 16-bit grayscale
    Image.fromarray(hole_mask(4)).save(masks / "e.png")
    Image.fromarray(photo(5)).save(images / "f.webp", lossless=True)
    Image.fromarray(hole_mask(5)).convert("RGB").save(masks / "f.png")  # an RGB mask
    Image.fromarray(photo(6)).save(images / "g_with_holes.png")  # the AIM 2020 naming
    Image.fromarray(hole_mask(6)).save(masks / "g_mask.png")
    (images / "bad.png").write_bytes(b"not an image at all")
    Image.fromarray(hole_mask(7)).save(masks / "bad.png")
    Image.fromarray(photo(8)).save(images / "nomask.png")
    return root


# (image, the mask the rules pick for it, its output)
GOOD = [
    ("a.png", "a.png", "a.png"),
    ("b.jpg", "b_mask.png", "b.png"),
    ("c.png", "c.png", "c.png"),
    ("d.png", "d.png", "d.png"),
    ("e.png", "e.png", "e.png"),
    ("f.webp", "f.png", "f.png"),
    ("g_with_holes.png", "g_mask.png", "g.png"),
]


@pytest.fixture(scope="module")
def folder_run(inputs, tmp_path_factory):
    output = tmp_path_factory.mktemp("cli_out") / "filled"
    code = run_cli(
        f"--image={inputs / 'images'}", f"--mask={inputs / 'masks'}", f"--output={output}"
    )
    return code, output


def test_folder_run_inpaints_every_matched_image(folder_run, inputs):
    code, output = folder_run
    assert code == 1  # bad.png and nomask.png failed, the rest went on
    assert sorted(p.name for p in output.iterdir()) == [out for _, _, out in GOOD]
    for image_name, mask_name, output_name in GOOD:
        source = image_io.load_image(inputs / "images" / image_name)
        result = image_io.load_image(output / output_name)
        hole = image_io.load_mask(inputs / "masks" / mask_name)
        assert result.rgb.shape == (HEIGHT, WIDTH, 3), image_name
        np.testing.assert_array_equal(result.rgb[~hole], source.rgb[~hole], err_msg=image_name)
        assert (result.rgb[hole] != source.rgb[hole]).any(), image_name
    c_out = image_io.load_image(output / "c.png")
    np.testing.assert_array_equal(
        c_out.alpha, np.asarray(Image.open(inputs / "images" / "c.png"))[..., 3]
    )
    b_out = Image.open(output / "b.png")
    assert b_out.getexif().get(MAKE) == "deepgin-test"
    assert ORIENTATION not in b_out.getexif()  # pixels are upright now
    assert b_out.info["icc_profile"] == Image.open(inputs / "images" / "b.jpg").info["icc_profile"]


def test_folder_run_reports_bad_files_and_keeps_existing_outputs(inputs, tmp_path, caplog):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.jpg").write_bytes(b"keep me")
    with caplog.at_level(logging.INFO, logger="absl"):
        code = run_cli(
            f"--image={inputs / 'images'}",
            f"--mask={inputs / 'masks'}",
            f"--output={output}",
            "--format=jpg",
        )
    assert code == 1
    assert "bad.png: not an image in a format Pillow can read" in caplog.text
    assert "no mask for nomask.png" in caplog.text
    assert "a.jpg exists; skipped" in caplog.text
    assert (output / "a.jpg").read_bytes() == b"keep me"
    assert Image.open(output / "b.jpg").format == "JPEG"
    assert "Inpainted 6 image(s), skipped 1 existing output(s), 2 failed." in caplog.text


def test_single_file_overwrite_and_format(inputs, tmp_path, blas_limits):
    image, mask = inputs / "images" / "a.png", inputs / "masks" / "a.png"
    target = tmp_path / "result.webp"
    target.write_bytes(b"old")
    calls = len(blas_limits)
    assert run_cli(f"--image={image}", f"--mask={mask}", f"--output={target}") == 0
    assert target.read_bytes() == b"old"
    assert len(blas_limits) == calls + 1
    args = (f"--image={image}", f"--mask={mask}", f"--output={target}", "--overwrite")
    assert run_cli(*args, "--quality=80") == 0
    assert Image.open(target).format == "WEBP" and Image.open(target).size == (WIDTH, HEIGHT)
    assert run_cli(f"--image={image}", f"--mask={mask}", f"--output={tmp_path}/x.gif") == 2
    assert run_cli(f"--image={image}", f"--mask={mask}", f"--output={tmp_path}/folder") == 0
    assert (tmp_path / "folder" / "a.png").is_file()


def test_mask_options(inputs, tmp_path):
    image = inputs / "images" / "a.png"
    source = np.asarray(Image.open(image))
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[10:20, 10:30] = 255
    mask[25:30, 35:45] = 100  # gray: a hole only below the default threshold
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(255 - mask).save(tmp_path / "inverted.png")
    Image.fromarray(mask).resize((2 * WIDTH, 2 * HEIGHT), Image.Resampling.NEAREST).save(
        tmp_path / "big.png"
    )

    def result(name: str, mask_file: str, *options: str) -> np.ndarray:
        out = tmp_path / f"out_{name}.png"
        args = (f"--image={image}", f"--mask={tmp_path / mask_file}", f"--output={out}")
        assert run_cli(*args, *options) == 0
        return np.asarray(Image.open(out))

    def changed(out: np.ndarray) -> np.ndarray:
        return (out != source).any(axis=-1)

    plain = result("plain", "m.png")
    assert not changed(plain)[mask <= 127].any() and changed(plain)[mask == 255].mean() > 0.5
    low = result("low", "m.png", "--mask_threshold=50")  # absl's spelling; hyphens work too
    assert changed(low)[mask == 100].any() and not changed(low)[mask == 0].any()
    inverted = result("inverted", "inverted.png", "--invert-mask")
    np.testing.assert_array_equal(inverted, plain)  # hole: not (255 - m > 127), i.e. m > 127
    dilated = result("dilated", "m.png", "--dilate=2")
    ring = np.zeros_like(mask, bool)
    ring[8:22, 8:32] = True
    ring[10:20, 10:30] = False
    assert not changed(dilated)[(mask <= 127) & ~ring].any() and changed(dilated)[ring].any()
    big = (f"--image={image}", f"--mask={tmp_path / 'big.png'}", f"--output={tmp_path / 'x.png'}")
    assert run_cli(*big) == 1  # a mask of another size fails without --resize-mask
    resized = result("resized", "big.png", "--resize-mask")
    np.testing.assert_array_equal(resized, plain)


def test_matching_rules(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ["p.png", "q.jpg", "r_with_holes.png", "s.png", "t.png", "t_mask.png"]:
        (images / name).touch()
    for name in ["u.png", "u.jpg", "notes.txt"]:
        (images / name).touch()
    for name in ["p.png", "q_mask.png", "r_mask.png", "s.png", "s.jpg"]:
        (masks / name).touch()
    tasks = {t.image.name: t for t in inpaint.plan_tasks(images, masks, tmp_path / "out")}
    expected = ["p.png", "q.jpg", "r_with_holes.png", "s.png", "t.png", "u.jpg", "u.png"]
    assert sorted(tasks) == expected  # not t_mask.png (a mask) nor notes.txt
    assert tasks["p.png"].mask == masks / "p.png"
    assert tasks["q.jpg"].mask == masks / "q_mask.png"
    assert tasks["r_with_holes.png"].mask == masks / "r_mask.png"
    assert tasks["r_with_holes.png"].output == tmp_path / "out" / "r.png"
    assert "more than one mask matches s.png: s.jpg, s.png" in tasks["s.png"].error
    assert "no mask for t.png" in tasks["t.png"].error
    assert "already the output of u.jpg" in tasks["u.png"].error
    # No --mask: <stem>_mask.* beside the image; a single mask file applies to every image.
    beside = {t.image.name: t for t in inpaint.plan_tasks(images, None, tmp_path / "out")}
    assert beside["t.png"].mask == images / "t_mask.png" and beside["p.png"].error
    single = inpaint.plan_tasks(images, masks / "p.png", tmp_path / "out", "webp")
    assert {t.mask for t in single} == {masks / "p.png"}
    assert {t.output.suffix for t in single} == {".webp"}
    with pytest.raises(ValueError, match="must be a folder"):
        inpaint.plan_tasks(images, masks, tmp_path / "out.png")
    with pytest.raises(ValueError, match="does not exist"):
        inpaint.plan_tasks(tmp_path / "missing.png", None, tmp_path / "out")


def test_help_states_the_rules_and_bad_checkpoint_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepgin_jax.inpaint", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Matching images to masks" in result.stdout and "--[no]invert-mask" in result.stdout
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(
        ["inpaint", f"--checkpoint={tmp_path}", f"--image={tmp_path}", f"--output={tmp_path}"]
    )
    assert inpaint.run(flag_values) == 2


# ----------------------------------------------------------------------------------------------
# Failures of any kind, outputs that would destroy inputs


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 GiB"),
        TypeError("unsupported operand"),
        cv2.error("OpenCV(5.0.0) error: (-215:Assertion failed)"),
    ],
    ids=["oom", "type", "cv2"],
)
def test_any_error_on_one_file_is_reported_and_the_run_goes_on(tmp_path, caplog, error):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed, name in enumerate(["a", "b", "c"]):
        Image.fromarray(photo(seed)).save(folder / f"{name}.png")
        Image.fromarray(hole_mask(seed)).save(folder / f"{name}_mask.png")
    calls = []

    def flaky_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(masked.shape)
        if len(calls) == 2:  # b.png
            raise error
        return masked

    tasks = inpaint.plan_tasks(folder, None, tmp_path / "out")
    with caplog.at_level(logging.ERROR, logger="absl"):
        summary = inpaint.inpaint_tasks(
            Inpainter.from_function(flaky_network), tasks, inpaint.MaskOptions(), progress=False
        )
    assert summary.inpainted == [folder / "a.png", folder / "c.png"]
    assert list(summary.failed) == [folder / "b.png"] and summary.exit_code == 1
    message = summary.failed[folder / "b.png"]
    assert str(folder / "b.png") in message and type(error).__name__ in message
    assert str(error) in message and message in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_outputs_that_are_inputs_are_refused_before_any_work(inputs, tmp_path, caplog):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        Image.fromarray(photo(0)).save(images / f"{name}.png")
        Image.fromarray(hole_mask(0)).save(masks / f"{name}.png")
    before = {p: p.read_bytes() for p in [*images.iterdir(), *masks.iterdir()]}
    with caplog.at_level(logging.ERROR, logger="absl"):
        code = run_cli(f"--image={images}", f"--mask={masks}", f"--output={images}", "--overwrite")
    assert code == 2 and "is the --image folder" in caplog.text
    linked = tmp_path / "linked"
    linked.symlink_to(images, target_is_directory=True)
    with pytest.raises(ValueError, match="is the --image folder"):
        inpaint.plan_tasks(images, masks, linked)
    # The mask folder as the output folder: a.png would replace the mask of a.png.
    with pytest.raises(ValueError, match=r"output .*a\.png \(for a\.png\) is the input mask"):
        inpaint.plan_tasks(images, masks, masks)
    image, mask = images / "a.png", masks / "a.png"
    for target in (image, mask, images / "." / "a.png"):
        with caplog.at_level(logging.ERROR, logger="absl"):
            code = run_cli(
                f"--image={image}", f"--mask={mask}", f"--output={target}", "--overwrite"
            )
        assert code == 2 and "writing it would destroy the input" in caplog.text
    (tmp_path / "hard.png").hardlink_to(image)
    with pytest.raises(ValueError, match="is the input image"):
        inpaint.plan_tasks(tmp_path / "hard.png", mask, image)
    assert {p: p.read_bytes() for p in [*images.iterdir(), *masks.iterdir()]} == before
    assert inpaint.plan_tasks(image, mask, images / "a.webp")  # another file in that folder


# ----------------------------------------------------------------------------------------------
# Bit-exact known pixels: 16-bit PNG, lossless WebP, the lossy-JPEG warning


def sixteen_bit_photo(seed: int) -> np.ndarray:
    """uint16 [37, 53, 3] whose low bytes carry information (an 8-bit round trip loses it)."""
    noise = np.random.default_rng(seed).integers(0, 257, (HEIGHT, WIDTH, 3))
    return (photo(seed).astype(np.int64) * 257 + noise).clip(0, 65535).astype(np.uint16)


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_16_bit_png_in_16_bit_png_out(tmp_path, kind):
    deep = sixteen_bit_photo(11)
    image = tmp_path / "deep.png"
    if kind == "gray":
        Image.fromarray(deep[..., 1]).save(image)  # Pillow writes 16-bit grayscale
        expected = np.repeat(deep[..., 1:2], 3, axis=-1)
    else:
        cv2.imwrite(str(image), deep[..., ::-1])  # Pillow cannot write 16-bit RGB; OpenCV can
        expected = deep
    Image.fromarray(hole_mask(11)).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert run_cli(f"--image={image}", f"--mask={tmp_path / 'mask.png'}", f"--output={out}") == 0
    result = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert result.dtype == np.uint16 and result.shape == (HEIGHT, WIDTH, 3)
    result = result[..., ::-1]
    hole = hole_mask(11) > 0
    np.testing.assert_array_equal(result[~hole], expected[~hole])
    assert (result[hole] != expected[hole]).any()


def test_webp_output_is_bit_exact_and_jpeg_warns_once(inputs, tmp_path, caplog):
    rgba = np.dstack(
        [photo(12), np.linspace(0, 255, WIDTH, dtype=np.uint8)[None].repeat(HEIGHT, 0)]
    )
    rgba[:, :4, 3] = 0  # fully transparent columns keep their colour too
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sticker.png")
    Image.fromarray(hole_mask(12)).save(tmp_path / "sticker_mask.png")
    hole = hole_mask(12) > 0
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert (
            run_cli(f"--image={tmp_path / 'sticker.png'}", f"--output={tmp_path / 'x.webp'}") == 0
        )
    assert "lossy" not in caplog.text
    result = np.asarray(Image.open(tmp_path / "x.webp"))
    assert result.shape == (HEIGHT, WIDTH, 4)
    np.testing.assert_array_equal(result[~hole], rgba[~hole])
    np.testing.assert_array_equal(result[..., 3], rgba[..., 3])
    lossy = tmp_path / "lossy.webp"
    args = (f"--image={tmp_path / 'sticker.png'}", f"--output={lossy}", "--nolossless-webp")
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert run_cli(*args, "--quality=60") == 0
    assert "WEBP output is lossy" in caplog.text
    assert (np.asarray(Image.open(lossy))[~hole] != rgba[~hole]).any()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="absl"):
        run_cli(
            f"--image={inputs / 'images'}",
            f"--mask={inputs / 'masks'}",
            f"--output={tmp_path / 'jpegs'}",
            "--format=jpg",
        )
    assert caplog.text.count("JPG output is lossy") == 1
    assert "pixels outside the holes will not be bit-identical" in caplog.text


# ----------------------------------------------------------------------------------------------
# Reference mode and the ensemble, end to end with the tiny generator


def test_reference_mode_and_ensemble_end_to_end(inputs, tmp_path, caplog):
    image = inputs / "images" / "a.png"
    source = np.asarray(Image.open(image))
    mask = hole_mask(13)
    mask[30:33, 40:50] = 60  # soft: a hole for the reference (> 0), not under threshold 127
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(255 - mask).save(tmp_path / "inverted.png")

    def result(name: str, mask_file: str, *options: str) -> np.ndarray:
        out = tmp_path / f"out_{name}.png"
        args = (f"--image={image}", f"--mask={tmp_path / mask_file}", f"--output={out}")
        assert run_cli(*args, "--max-batch=1", *options) == 0  # one compiled shape each
        out_pixels = np.asarray(Image.open(out))
        assert out_pixels.shape == source.shape
        return out_pixels

    reference = result("reference", "m.png", "--mode=reference")
    np.testing.assert_array_equal(reference[mask == 0], source[mask == 0])
    assert (reference[mask == 60] != source[mask == 60]).any()
    inverted = result("inverted", "inverted.png", "--mode=reference", "--invert-mask")
    np.testing.assert_array_equal(inverted, reference)
    with caplog.at_level(logging.ERROR, logger="absl"):
        code = run_cli(
            f"--image={image}",
            f"--mask={tmp_path / 'm.png'}",
            f"--output={tmp_path / 'never.png'}",
            "--mode=reference",
            "--mask-threshold=127",
        )
    assert (
        code == 2
        and "threshold=127 (CLI: --mask-threshold) cannot apply in reference mode" in caplog.text
    )
    assert not (tmp_path / "never.png").exists()
    ensemble = result("ensemble", "m.png", "--ensemble")
    hole = mask > 127
    np.testing.assert_array_equal(ensemble[~hole], source[~hole])
    assert (ensemble[hole] != source[hole]).any()
    plain = result("plain", "m.png")
    assert (ensemble[hole] != plain[hole]).any()


# ----------------------------------------------------------------------------------------------
# The shipped model when no --checkpoint is given; the strategy flag


def run_cli_without_checkpoint(*args: str) -> int:
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", *args])
    return inpaint.run(flag_values)


def test_without_checkpoint_the_shipped_model_is_used_and_named_once(
    inputs, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    image, mask = inputs / "images" / "a.png", inputs / "masks" / "a.png"
    with caplog.at_level(logging.INFO, logger="absl"):
        code = run_cli_without_checkpoint(
            f"--image={image}", f"--mask={mask}", f"--output={tmp_path / 'shipped.png'}"
        )
    assert code == 0
    notes = [r.getMessage() for r in caplog.records if "using the shipped" in r.getMessage()]
    assert len(notes) == 1 and "DeepGIN-tiny" in notes[0] and "sha256" in notes[0]
    assert run_cli(f"--image={image}", f"--mask={mask}", f"--output={tmp_path / 'f32.png'}") == 0
    by_shipped = np.asarray(Image.open(tmp_path / "shipped.png"), np.int32)
    by_checkpoint = np.asarray(Image.open(tmp_path / "f32.png"), np.int32)
    hole = hole_mask(0) > 0
    assert np.abs(by_shipped - by_checkpoint).max() <= 1  # float16 storage
    assert (by_shipped[hole] != photo(0)[hole]).any()
    np.testing.assert_array_equal(by_shipped[~hole], photo(0)[~hole])


def test_missing_shipped_weights_exit_2_with_the_reason_and_no_traceback(inputs, tmp_path):
    image, mask = inputs / "images" / "a.png", inputs / "masks" / "a.png"
    output = tmp_path / "out.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepgin_jax.inpaint",
            f"--image={image}",
            f"--mask={mask}",
            f"--output={output}",
        ],
        env={**os.environ, shipped.ENV_VAR: str(tmp_path / "no-weights")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "shipped DeepGIN-compact weights are missing" in result.stderr
    assert "--checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()


def test_strategy_flag_reaches_the_inpainter_and_crop_is_refused_in_reference_mode(
    inputs, tmp_path
):
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--strategy=crop", "--image=x", "--output=y"])
    assert cli.inpaint_options(flag_values).strategy == "crop"
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--image=x", "--output=y"])
    assert cli.inpaint_options(flag_values).strategy == "auto"
    image, mask = inputs / "images" / "a.png", inputs / "masks" / "a.png"
    output = tmp_path / "out.png"
    args = (f"--image={image}", f"--mask={mask}", f"--output={output}")
    assert run_cli(*args, "--mode=reference", "--strategy=crop") == 2
    assert not output.exists()


def test_upscale_and_blend_flags_reach_the_inpainter_and_are_refused_in_reference_mode(
    inputs, tmp_path, caplog
):
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--upscale=1.5", "--blend=poisson", "--image=x", "--output=y"])
    options = cli.inpaint_options(flag_values)
    assert (options.upscale, options.blend) == (1.5, "poisson")
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--image=x", "--output=y"])
    options = cli.inpaint_options(flag_values)
    assert (options.upscale, options.blend) == (None, None)  # the model's own
    image, mask = inputs / "images" / "a.png", inputs / "masks" / "a.png"
    output = tmp_path / "out.png"
    args = (f"--image={image}", f"--mask={mask}", f"--output={output}")
    assert run_cli(*args, "--mode=reference", "--upscale=2") == 2
    assert "upscale=2 (CLI: --upscale 2) cannot apply in reference mode" in caplog.text
    assert run_cli(*args, "--mode=reference", "--blend=poisson") == 2
    assert "blend='poisson' (CLI: --blend poisson) cannot apply in reference mode" in caplog.text
    assert not output.exists()
    source, hole = np.asarray(Image.open(image)), np.asarray(Image.open(mask)) > 127
    results = []
    for setting in ("--upscale=1", "--upscale=2", "--blend=poisson"):
        assert run_cli(*args, setting, "--overwrite") == 0
        results.append(np.asarray(Image.open(output)))
        np.testing.assert_array_equal(results[-1][~hole], source[~hole])
    assert (results[0][hole] != results[1][hole]).any()
    assert (results[0][hole] != results[2][hole]).any()


def test_the_bar_advances_per_batch_of_sub_images_and_logs_do_not_break_it(
    tmp_path, capsys, monkeypatch
):
    from absl import logging as absl_logging

    Image.fromarray(photo(0, 64, 64)).save(tmp_path / "a.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 8:56] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    # The bar and absl's log lines on the one captured stream, as on a terminal (absl.app.run
    # puts absl's handler on the root logger once; other tests may have taken it off or left it).
    absl_handler = absl_logging.get_absl_handler()
    monkeypatch.setattr(absl_handler.python_handler, "stream", sys.stderr)
    root = logging.getLogger()
    others = [handler for handler in root.handlers if handler is not absl_handler]
    monkeypatch.setattr(root, "handlers", [*others, absl_handler])
    reported = []

    def slow_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
        time.sleep(0.15)  # past tqdm's 0.1 s between redraws
        absl_logging.warning("batch of %d", masked.shape[0])
        return masked

    inpainter = Inpainter.from_function(
        slow_network, tile_size=16, max_batch=4, strategy="whole", blend="paste"
    )
    inpainter.inpaint(photo(0, 64, 64), mask, progress=lambda *done: reported.append(done))
    assert reported == [(4, 16), (8, 16), (12, 16), (16, 16)]
    tasks = inpaint.plan_tasks(tmp_path / "a.png", None, tmp_path / "out.png")
    capsys.readouterr()
    summary = inpaint.inpaint_tasks(inpainter, tasks, inpaint.MaskOptions())
    assert summary.inpainted == [tmp_path / "a.png"]
    screen = capsys.readouterr().err
    shown = {float(n) for n in re.findall(r"\| (\d\.\d\d)/1 image", screen)}
    assert {0.25, 0.5, 0.75, 1.0} <= shown, screen
    assert "sub-images 2/4" not in screen and "sub-images 8/16" in screen
    assert screen.count("batch of 4") == 4
    for line in screen.splitlines():  # each log line starts a line of its own
        if "batch of 4" in line:
            assert line.split("\r")[-1].lstrip().startswith("W"), repr(line)


def test_dilate_flag_is_bounded():
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match=r"dilate.*10000"):
        flag_values(["inpaint", "--dilate=10000", "--image=x", "--output=y"])
    flag_values(["inpaint", f"--dilate={inference.MAX_DILATE}", "--image=x", "--output=y"])
    assert flag_values.dilate == inference.MAX_DILATE


def test_one_photo_is_compiled_for_few_calls_and_a_folder_is_not(inputs, tmp_path, monkeypatch):
    few_calls = []
    real = inpaint.Inpainter.from_checkpoint

    def recording(*args, **kwargs):
        few_calls.append(kwargs["few_calls"])
        return real(*args, **kwargs)

    monkeypatch.setattr(inpaint.Inpainter, "from_checkpoint", recording)
    image, mask = inputs / "images" / "a.png", inputs / "masks" / "a.png"
    assert run_cli(f"--image={image}", f"--mask={mask}", f"--output={tmp_path}/a.png") == 0
    folder = (f"--image={inputs / 'images'}", f"--mask={inputs / 'masks'}")
    run_cli(*folder, f"--output={tmp_path}/all")  # exit 1: the folder holds a photo without mask
    assert (tmp_path / "all" / "a.png").is_file()
    assert few_calls == [True, False]


def test_parallel_calls_flag_reaches_the_inpainter_options():
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--parallel_calls=3", "--image=x", "--output=y"])
    assert cli.inpaint_options(flag_values).parallel_calls == 3
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--image=x", "--output=y"])
    assert cli.inpaint_options(flag_values).parallel_calls is None  # one per core on a CPU
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match="parallel_calls"):
        flag_values(["inpaint", "--parallel_calls=0", "--image=x", "--output=y"])
