"""Evaluation: pairing, buckets, the classical baselines, and the whole command on tiny images
with the tiny generator, Telea, Navier-Stokes and a small random LPIPS network."""

from __future__ import annotations

import collections
import csv
import logging
import math
import re

import cv2
import numpy as np
import pytest
from absl import flags
from PIL import Image

from deepgin_jax import evaluate, evaluation, image_io, masks, metrics, shipped
from deepgin_jax.baselines import (
    BASELINES,
    BiharmonicInpainter,
    FSRInpainter,
    OpenCVInpainter,
    PatchMatchInpainter,
    make_baseline,
)
from deepgin_jax.models import lpips
from tests.inpainting_helpers import tiny_checkpoint, tiny_shipped, write_lpips_file

SIZE = 64


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Gradients plus a little noise: uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height)[:, None, None]
    cols = np.linspace(0, 1, width)[None, :, None]
    colour = rng.random(3)
    image = 200 * (rows * colour + cols * (1 - colour)) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image + 20, 0, 255).astype(np.uint8)


def pooled_features(images: np.ndarray) -> np.ndarray:
    """A small stand-in for the FID network: 4x4 block means, [N, 4*4*3]."""
    x = np.asarray(images, np.float64) / 255.0
    n = x.shape[0]
    return x.reshape(n, 4, SIZE // 4, 4, SIZE // 4, 3).mean(axis=(2, 4)).reshape(n, -1)


def saved_outputs(folder, method: str, rows) -> np.ndarray:
    """The images `--save-images` wrote for these CSV rows: uint8 [N, 64, 64, 3]."""
    names = [f"{r['image'].rsplit('.', 1)[0]}__{r['mask'].rsplit('.', 1)[0]}.png" for r in rows]
    return np.stack([np.asarray(Image.open(folder / "images" / method / n)) for n in names])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    images = root / "images"
    images.mkdir()
    Image.fromarray(smooth_image(SIZE, SIZE, 0)).save(images / "a.png")
    Image.fromarray(smooth_image(80, SIZE, 1)).save(images / "b.png")  # central crop only
    Image.fromarray(smooth_image(120, 100, 2)).save(images / "c.jpg", quality=95)  # + resize
    rgba = np.dstack([smooth_image(SIZE, 96, 3), np.full((SIZE, 96), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images / "d.png")
    masks.write_mask_set(root / "masks", kind="mixed", count=3, height=SIZE, width=SIZE, seed=0)
    weights = root / "weights"
    write_lpips_file(weights / evaluation.LPIPS_FILES["vgg"])
    return root


@pytest.fixture(scope="module")
def command_run(dataset):
    """The whole command, in-process, with the generator, both baselines and LPIPS."""
    output = dataset / "out"
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(
        [
            "evaluate",
            f"--images={dataset / 'images'}",
            f"--masks={dataset / 'masks'}",
            f"--output={output}",
            f"--size={SIZE}",
            f"--checkpoint=tiny={tiny_checkpoint()}",
            "--baselines=telea,ns",
            f"--weights={dataset / 'weights'}",
            "--batch-size=4",
            "--max_batch=4",  # and --batch-size: both spellings are accepted
            "--grid=2",
            "--save-images",
        ]
    )
    summary = evaluate.run(flag_values)
    with open(output / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    return output, summary, rows


def test_hole_ratio_buckets_and_pairing():
    assert evaluation.hole_ratio_bucket(0.0) == "0-10%"
    assert evaluation.hole_ratio_bucket(0.1) == "0-10%"
    assert evaluation.hole_ratio_bucket(0.1001) == "10-20%"
    assert evaluation.hole_ratio_bucket(0.6) == "50-60%"
    assert evaluation.hole_ratio_bucket(0.61) == ">60%"
    assert evaluation.bucket_names()[-1] == ">60%" and len(evaluation.bucket_names()) == 7
    manifest = {
        "masks": [{"file": f"m{i}.png", "type": "rect", "hole_ratio": 0.1 * i} for i in range(3)]
    }
    pairs = evaluation.make_pairs(["x", "y"], manifest, masks_per_image=2)
    assert [(p.image, p.mask_index) for p in pairs] == [("x", 0), ("x", 1), ("y", 2), ("y", 0)]
    assert [p.mask_index for p in evaluation.make_pairs(list("abcd"), manifest)] == [0, 1, 2, 0]


def test_center_square():
    tall = smooth_image(80, SIZE, 1)
    np.testing.assert_array_equal(evaluation.center_square(tall, SIZE), tall[8:72])
    wide = smooth_image(100, 120, 2)
    expected = Image.fromarray(wide[:, 10:110]).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(evaluation.center_square(wide, SIZE), np.asarray(expected))


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_baselines_match_opencv_and_keep_known_pixels(method):
    image = smooth_image(37, 53, 4)
    hole = np.zeros((37, 53), bool)
    hole[10:20, 5:30] = True
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    expected = cv2.inpaint(image, hole.astype(np.uint8) * 255, 5.0, flag)
    baseline = OpenCVInpainter(method, radius=5.0)
    out = baseline.inpaint(image, hole)
    np.testing.assert_array_equal(out[hole], expected[hole])
    np.testing.assert_array_equal(out[~hole], image[~hole])
    as_float = baseline.inpaint(image / 255.0, hole)
    assert as_float.dtype == np.float64
    np.testing.assert_array_equal(as_float[~hole], image[~hole] / 255.0)
    np.testing.assert_allclose(as_float[hole], expected[hole] / 255.0, atol=1e-6)
    pil = baseline.inpaint(Image.fromarray(image), Image.fromarray(hole))
    np.testing.assert_array_equal(np.asarray(pil), out)


def test_patchmatch_baseline_is_seeded_and_keeps_known_pixels():
    import patchmatch_cython

    image = smooth_image(37, 53, 4)
    hole = np.zeros((37, 53), bool)
    hole[10:20, 5:30] = True
    baseline = PatchMatchInpainter()
    out = baseline.inpaint(image, hole)
    expected = patchmatch_cython.inpaint_pyramid(image, hole, patch_size=5, seed=0)
    np.testing.assert_array_equal(out[hole], expected[hole])
    np.testing.assert_array_equal(out[~hole], image[~hole])
    np.testing.assert_array_equal(PatchMatchInpainter().inpaint(image, hole), out)
    assert (out[hole].astype(int) - image[hole]).std() > 0  # it filled something
    # A hole in every other column leaves no known pixel at the pyramid's coarsest level:
    # single-scale PatchMatch.
    stripes = np.zeros((37, 53), bool)
    stripes[:, ::2] = True
    striped = baseline.inpaint(image, stripes)
    expected = patchmatch_cython.inpaint_single(image, stripes, iterations=7, seed=0)
    np.testing.assert_array_equal(striped[stripes], expected[stripes])
    np.testing.assert_array_equal(striped[~stripes], image[~stripes])
    # Smaller than a patch: mirror-padded, still filled, known pixels kept.
    tiny_hole = np.zeros((3, 4), bool)
    tiny_hole[1, 1] = True
    tiny = baseline.inpaint(image[:3, :4], tiny_hole)
    np.testing.assert_array_equal(tiny[~tiny_hole], image[:3, :4][~tiny_hole])


def linear_gradient(height: int, width: int) -> np.ndarray:
    """A different plane in each channel: uint8 [H, W, 3], no noise."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.dstack([40 + 2 * rows, 40 + 2 * cols, 60 + rows + cols]).astype(np.uint8)


def hole_error(out: np.ndarray, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return np.abs(out[hole].astype(int) - image[hole])


def test_biharmonic_baseline_reproduces_a_smooth_gradient():
    from skimage.restoration import inpaint_biharmonic

    image = linear_gradient(64, 64)
    hole = np.zeros((64, 64), bool)
    hole[20:40, 16:44] = True
    hole[50:56, 4:10] = True  # a second hole: solved on its own
    out = BiharmonicInpainter().inpaint(image, hole)
    np.testing.assert_array_equal(out[~hole], image[~hole])
    assert hole_error(out, image, hole).max() <= 1  # a plane is biharmonic: rounding only
    telea = OpenCVInpainter("telea").inpaint(image, hole)
    assert hole_error(telea, image, hole).max() > 10  # which Telea's fill is far from
    noisy = smooth_image(37, 53, 4)
    expected = inpaint_biharmonic(noisy, hole[:37, :53], channel_axis=-1)
    np.testing.assert_array_equal(
        BiharmonicInpainter().inpaint(noisy, hole[:37, :53])[hole[:37, :53]],
        np.rint(expected[hole[:37, :53]] * 255).astype(np.uint8),
    )


def test_fsr_baseline_matches_xphoto_and_fills_images_smaller_than_its_blocks():
    image = linear_gradient(64, 64)
    hole = np.zeros((64, 64), bool)
    hole[20:40, 16:44] = True
    out = FSRInpainter().inpaint(image, hole)
    np.testing.assert_array_equal(out[~hole], image[~hole])
    # xphoto's mask is the other way round: non-zero = known.
    expected = np.zeros_like(image)
    masked = np.where(hole[..., None], np.uint8(128), image)[..., ::-1].copy()
    known = (~hole).astype(np.uint8) * 255
    cv2.xphoto.inpaint(masked, known, expected, cv2.xphoto.INPAINT_FSR_FAST)
    np.testing.assert_array_equal(out[hole], expected[..., ::-1][hole])
    assert hole_error(out, image, hole).mean() < 4.0
    # 8 x 12 is under one FSR block: without the padding its hole would be filled with
    # garbage 80 levels off; padded, the gradient goes on.
    small, small_hole = image[:8, :12], hole[:8, :12].copy()
    small_hole[3:6, 4:9] = True
    assert hole_error(FSRInpainter().inpaint(small, small_hole), small, small_hole).max() <= 6


def test_every_baseline_is_listed_and_built_by_name():
    assert set(BASELINES) == {"telea", "ns", "biharmonic", "fsr_fast", "patchmatch"}
    assert isinstance(make_baseline("biharmonic"), BiharmonicInpainter)
    assert isinstance(make_baseline("fsr_fast"), FSRInpainter)
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    for name in BASELINES:
        assert name in flag_values["baselines"].help


def test_build_methods_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown baseline 'lama'"):
        evaluation.build_methods([], ["lama"])
    with pytest.raises(ValueError, match="repeated: telea"):
        evaluation.build_methods([], ["telea", "telea"])
    with pytest.raises(ValueError, match="NAME=DIR"):
        evaluation.build_methods(["=somewhere"])
    with pytest.raises(ValueError, match="radius"):
        evaluation.build_methods([], ["ns"], radius=0)


def test_mask_set_of_another_size_is_rejected(dataset, tmp_path):
    masks.write_mask_set(tmp_path / "m32", kind="rect", count=1, height=32, width=32, seed=0)
    with pytest.raises(ValueError, match=r"32x32 but the evaluation size \(--size\) is 64"):
        evaluation.evaluate(
            dataset / "images",
            tmp_path / "m32",
            {"telea": OpenCVInpainter()},
            tmp_path / "o",
            size=SIZE,
        )


def test_without_checkpoint_the_shipped_model_is_scored_beside_the_baselines(
    command_run, dataset, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(
        [
            "evaluate",
            f"--images={dataset / 'images'}",
            f"--masks={dataset / 'masks'}",
            f"--output={tmp_path}",
            f"--size={SIZE}",
            "--baselines=telea,patchmatch",
            "--batch_size=4",
            "--max_batch=4",
        ]
    )
    with caplog.at_level(logging.INFO, logger="absl"):
        summary = evaluate.run(flag_values)
    assert list(summary["methods"]) == ["DeepGIN-tiny", "telea", "patchmatch"]
    notes = [r.getMessage() for r in caplog.records if "using the shipped" in r.getMessage()]
    assert len(notes) == 1
    # The shipped (float16) tiny generator scores as its float32 checkpoint does.
    _, _, rows = command_run
    with open(tmp_path / "per_image.csv") as f:
        shipped_rows = [r for r in csv.DictReader(f) if r["method"] == "DeepGIN-tiny"]
    tiny_rows = [r for r in rows if r["method"] == "tiny"]
    assert len(shipped_rows) == len(tiny_rows) == 4
    for mine, theirs in zip(shipped_rows, tiny_rows, strict=True):
        assert float(mine["hole_psnr"]) == pytest.approx(float(theirs["hole_psnr"]), abs=0.05)


def test_missing_shipped_weights_stop_the_command_with_the_reason(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(shipped.ENV_VAR, str(tmp_path / "empty"))
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(
        [
            "evaluate",
            f"--images={dataset}",
            f"--masks={dataset}",
            f"--output={tmp_path}",
            "--baselines=telea",
        ]
    )
    with pytest.raises(shipped.ShippedWeightsError, match="weights are missing"):
        evaluate.run(flag_values)
    assert issubclass(shipped.ShippedWeightsError, OSError)  # main() exits 2 without traceback


def test_per_image_csv_holds_direct_computations(command_run, dataset):
    output, _, rows = command_run
    assert len(rows) == 3 * 4
    assert [r["method"] for r in rows[::4]] == ["tiny", "telea", "ns"]
    manifest, mask_paths = masks.read_mask_set(dataset / "masks")
    telea = [r for r in rows if r["method"] == "telea"]
    assert [r["image"] for r in telea] == ["a.png", "b.png", "c.jpg", "d.png"]
    assert [r["mask"] for r in telea] == [manifest["masks"][i]["file"] for i in (0, 1, 2, 0)]
    for row in rows:
        entry = next(m for m in manifest["masks"] if m["file"] == row["mask"])
        assert row["mask_type"] == entry["type"]
        assert float(row["hole_ratio"]) == pytest.approx(entry["hole_ratio"])
        assert row["hole_bucket"] == evaluation.hole_ratio_bucket(entry["hole_ratio"])
    # Telea on a.png (already 64x64, so no crop or resize) with mask 0, computed directly.
    original = np.asarray(Image.open(dataset / "images" / "a.png"))
    hole = image_io.load_mask(mask_paths[0])
    filled = cv2.inpaint(original, hole.astype(np.uint8) * 255, 3.0, cv2.INPAINT_TELEA)
    result = np.where(hole[..., None], filled, original)
    error = (result.astype(np.float64) - original) / 255.0
    assert float(telea[0]["psnr"]) == pytest.approx(-10 * math.log10(np.mean(error**2)), rel=1e-5)
    assert float(telea[0]["l1_percent"]) == pytest.approx(100 * np.abs(error).mean(), rel=1e-5)
    ssim = metrics.ssim(result[None], original[None])[0]
    assert float(telea[0]["ssim"]) == pytest.approx(float(ssim), rel=1e-5)
    # Inside the hole alone: every channel of the hole's pixels, nothing else.
    inside = error[hole]
    assert inside.size < error.size and np.abs(inside).max() > 0
    hole_psnr = -10 * math.log10(np.mean(inside**2))
    assert float(telea[0]["hole_psnr"]) == pytest.approx(hole_psnr, rel=1e-5)
    assert float(telea[0]["hole_l1_percent"]) == pytest.approx(
        100 * np.abs(inside).mean(), rel=1e-5
    )
    assert float(telea[0]["hole_psnr"]) < float(telea[0]["psnr"])
    # LPIPS against the same network applied directly to the saved outputs.
    saved = saved_outputs(output, "telea", telea)
    assert np.array_equal(saved[0], result)
    originals = np.stack(
        [
            evaluation.center_square(image_io.read_rgb(dataset / "images" / r["image"]), SIZE)
            for r in telea
        ]
    )
    distance = lpips.LPIPSDistance.from_file(dataset / "weights" / "lpips_vgg.npz")
    np.testing.assert_allclose(
        [float(r["lpips"]) for r in telea], distance(saved, originals), rtol=1e-4
    )
    # The generator's outputs keep every known pixel and fill the holes.
    tiny = saved_outputs(output, "tiny", [r for r in rows if r["method"] == "tiny"])
    np.testing.assert_array_equal(tiny[0][~hole], original[~hole])
    assert (tiny[0][hole] != 255).any()


def _markdown_row(text: str, heading: str, method: str) -> list[str]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith(f"| {method} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_markdown_summary_and_grid(command_run, dataset):
    output, summary, rows = command_run
    text = (output / "results.md").read_text()
    header = re.search(r"## PSNR \(dB\) ↑ by mask type\n\n(\|.*\|)\n", text).group(1)
    types = summary["mask_types"]
    assert (
        header
        == "| method | all (n=4) | "
        + " | ".join(f"{t} (n={sum(r['mask_type'] == t for r in rows) // 3})" for t in types)
        + " |"
    )
    for method in ("tiny", "telea", "ns"):
        cells = _markdown_row(text, "PSNR (dB) ↑ by mask type", method)
        values = [float(r["psnr"]) for r in rows if r["method"] == method]
        assert cells[1] == f"{np.mean(values):.2f}"
        first_type = [
            float(r["psnr"]) for r in rows if r["method"] == method and r["mask_type"] == types[0]
        ]
        assert cells[2] == f"{np.mean(first_type):.2f}"
        lpips_cells = _markdown_row(text, "LPIPS ↓ by hole ratio", method)
        assert len(lpips_cells) == 1 + len(summary["buckets"])
        for metric, heading, decimals in (
            ("hole_psnr", "hole PSNR (dB) ↑ by mask type", 2),
            ("hole_l1_percent", "hole L1 error (%) ↓ by mask type", 3),
        ):
            cells = _markdown_row(text, heading, method)
            for column, group in enumerate([None, *types], start=1):
                values = [
                    float(r[metric])
                    for r in rows
                    if r["method"] == method and group in (None, r["mask_type"])
                ]
                assert cells[column] == f"{np.mean(values):.{decimals}f}"
                by_type = summary["methods"][method]["by_type"][group or "all"][metric]
                assert by_type == pytest.approx(np.mean(values))
    assert "## FID" not in text  # no FID file in the weights folder
    grid = np.asarray(Image.open(output / "grid.png"))
    step = SIZE + 4
    assert grid.shape == (16 + 2 * step - 4, 5 * step - 4, 3)
    original = np.asarray(Image.open(dataset / "images" / "a.png"))
    hole = image_io.load_mask(masks.read_mask_set(dataset / "masks")[1][0])
    np.testing.assert_array_equal(
        grid[16 : 16 + SIZE, :SIZE], np.where(hole[..., None], 255, original)
    )
    np.testing.assert_array_equal(grid[16 : 16 + SIZE, 4 * step :], original)


def test_fid_per_method_and_mask_type(dataset, tmp_path):
    features = evaluation.FeatureNetworks(fid=pooled_features)
    methods = {"telea": OpenCVInpainter("telea"), "ns": OpenCVInpainter("ns")}
    summary = evaluation.evaluate(
        dataset / "images",
        dataset / "masks",
        methods,
        tmp_path,
        size=SIZE,
        masks_per_image=2,
        feature_networks=features,
        batch_size=3,
        fid_min_count=4,
        grid_count=0,
        save_images=True,
        progress=False,
    )
    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    originals = {
        name: evaluation.center_square(image_io.read_rgb(dataset / "images" / name), SIZE)
        for name in ("a.png", "b.png", "c.jpg", "d.png")
    }
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        assert len(mine) == 8
        outputs = saved_outputs(tmp_path, method, mine)
        truth = np.stack([originals[r["image"]] for r in mine])
        fid = summary["methods"][method]["fid"]
        assert fid["all"]["count"] == 8
        assert fid["all"]["fid"] == pytest.approx(
            metrics.fid_from_features(pooled_features(outputs), pooled_features(truth)), rel=1e-4
        )
        counts = collections.Counter(r["mask_type"] for r in mine)
        assert set(fid) == {"all"} | {t for t, n in counts.items() if n >= 4}
        for mask_type in set(fid) - {"all"}:
            chosen = [i for i, r in enumerate(mine) if r["mask_type"] == mask_type]
            assert fid[mask_type]["count"] == len(chosen)
            assert fid[mask_type]["fid"] == pytest.approx(
                metrics.fid_from_features(
                    pooled_features(outputs[chosen]), pooled_features(truth[chosen])
                ),
                rel=1e-4,
            )
    text = (tmp_path / "results.md").read_text()
    assert "## FID ↓" in text and "| all (n=8) |" in text
    assert not (tmp_path / "grid.png").exists()
