"""Mask generators (spec section 6) and the fixed mask-set command line."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from deepgin_jax import image_io, masks


@pytest.mark.parametrize(
    ("kind", "expected_ratio"), [("rect", 0.246), ("freeform", 0.395), ("ca", 0.51)]
)
def test_mean_hole_ratio_matches_reference(kind, expected_ratio):
    rng = np.random.default_rng(2020)
    ratios = [masks.generate_mask(kind, rng, 256, 256).mean() for _ in range(500)]
    assert abs(np.mean(ratios) - expected_ratio) < 0.02


@pytest.mark.parametrize("kind", [*masks.MASK_TYPES, "mixed"])
@pytest.mark.parametrize(("height", "width"), [(256, 256), (37, 101), (130, 61), (1, 9)])
def test_shape_dtype_and_binary_values(kind, height, width):
    mask = masks.generate_mask(kind, np.random.default_rng(5), height, width)
    assert mask.shape == (height, width) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", [*masks.MASK_TYPES, "mixed"])
def test_same_seed_same_mask_other_seed_other_mask(kind):
    first = masks.generate_mask(kind, np.random.default_rng(11), 96, 80)
    again = masks.generate_mask(kind, np.random.default_rng(11), 96, 80)
    np.testing.assert_array_equal(first, again)
    others = [masks.generate_mask(kind, np.random.default_rng(s), 96, 80) for s in range(12, 16)]
    assert any(not np.array_equal(first, other) for other in others)


def test_rectangle_is_one_box_within_size_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = masks.rectangular_mask(rng, 100, 200)
        rows, cols = np.nonzero(mask)
        box_h, box_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == box_h * box_w  # a filled axis-aligned box
        assert 30 <= box_h <= 70 and 60 <= box_w <= 140


def test_free_form_stroke_count():
    rng = np.random.default_rng(0)
    assert masks.free_form_mask(rng, 64, 64, num_strokes=0).sum() == 0
    one = masks.free_form_mask(rng, 256, 256, num_strokes=1)
    _, count = ndimage.label(one)
    assert count == 1 and one.sum() >= 10 * 10 * 0.5  # a connected stroke, at least one dab


def test_binary_median_equals_scipy_median_filter():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (3, 7), (32, 32), (65, 40)]:
        grid = rng.integers(0, 2, shape, dtype=np.uint8)
        expected = ndimage.median_filter(grid, size=3, mode="constant")
        np.testing.assert_array_equal(masks.binary_median_3x3(grid), expected)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_cellular_automata_follows_spec_steps(scale):
    # Spec 6.3 written out with the general tools: noise on a ceil(H/s) x ceil(W/s) grid,
    # r median filters, s x s block replication cropped to H x W, cross dilation if s > 1.
    height, width, iterations = 50, 77, 3
    mask = masks.cellular_automata_mask(
        np.random.default_rng(3), height, width, scale=scale, iterations=iterations
    )
    grid = np.random.default_rng(3).integers(
        0, 2, (-(-height // scale), -(-width // scale)), dtype=np.uint8
    )
    for _ in range(iterations):
        grid = ndimage.median_filter(grid, size=3, mode="constant")
    expected = np.kron(grid, np.ones((scale, scale), np.uint8))[:height, :width] > 0
    if scale > 1:
        expected = ndimage.binary_dilation(expected, ndimage.generate_binary_structure(2, 1))
    np.testing.assert_array_equal(mask, expected.astype(np.float32))


def test_mixed_draws_every_type_and_bad_kind_fails():
    rng = np.random.default_rng(0)
    drawn = {masks.resolve_mask_kind("mixed", rng) for _ in range(60)}
    assert drawn == set(masks.MASK_TYPES)
    with pytest.raises(ValueError, match="Unknown mask type 'box'"):
        masks.generate_mask("box", rng, 8, 8)


def test_balanced_set_gives_every_image_one_mask_of_each_type(tmp_path):
    from deepgin_jax import evaluation

    manifest = masks.write_mask_set(
        tmp_path, kind="balanced", count=12, height=32, width=32, seed=3
    )
    assert [e["type"] for e in manifest["masks"]] == list(masks.MASK_TYPES) * 4
    pairs = evaluation.make_pairs([f"{i}.png" for i in range(4)], manifest, masks_per_image=3)
    per_image = collections.defaultdict(list)
    for pair in pairs:
        per_image[pair.image].append(pair.mask_type)
    assert all(sorted(types) == sorted(masks.MASK_TYPES) for types in per_image.values())
    assert len(per_image) == 4
    with pytest.raises(ValueError, match="Unknown mask set type 'box'"):
        masks.write_mask_set(tmp_path, kind="box", count=1, height=8, width=8, seed=0)


def test_mask_set_is_prefix_stable_and_matches_manifest(tmp_path):
    small = masks.write_mask_set(tmp_path / "a", kind="mixed", count=4, height=24, width=40, seed=9)
    large = masks.write_mask_set(tmp_path / "b", kind="mixed", count=7, height=24, width=40, seed=9)
    assert large["masks"][:4] == small["masks"]
    for entry in small["masks"]:
        assert entry["file"].startswith(entry["type"] + "_")
        assert (tmp_path / "a" / entry["file"]).read_bytes() == (
            tmp_path / "b" / entry["file"]
        ).read_bytes()
        hole = image_io.load_mask(tmp_path / "a" / entry["file"])
        assert hole.shape == (24, 40)
        assert abs(hole.mean() - entry["hole_ratio"]) < 1e-6
    manifest, paths = masks.read_mask_set(tmp_path / "a")
    assert manifest == small and [p.name for p in paths] == [e["file"] for e in small["masks"]]


def _run_cli(output, *extra):
    command = [sys.executable, "-m", "deepgin_jax.masks", "--output", str(output), *extra]
    return subprocess.run(command, check=True, capture_output=True, text=True)


def test_cli_two_runs_are_byte_identical(tmp_path):
    args = ("--type", "mixed", "--count", "9", "--size", "48", "--seed", "4")
    _run_cli(tmp_path / "one", *args)
    _run_cli(tmp_path / "two", *args)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(names) == 10 and "masks.json" in names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    manifest = json.loads((tmp_path / "one" / "masks.json").read_text())
    assert manifest["seed"] == 4 and manifest["height"] == manifest["width"] == 48
    kinds = {entry["type"] for entry in manifest["masks"]}
    assert kinds <= set(masks.MASK_TYPES) and len(kinds) > 1
    for entry in manifest["masks"]:
        with Image.open(tmp_path / "one" / entry["file"]) as img:
            assert img.mode == "L" and img.size == (48, 48)
            assert set(np.unique(np.asarray(img))) <= {0, 255}


def test_cli_non_square_single_type(tmp_path):
    _run_cli(tmp_path, "--type", "ca", "--count", "2", "--height", "30", "--width", "50")
    manifest = json.loads((tmp_path / "masks.json").read_text())
    assert [e["file"] for e in manifest["masks"]] == ["ca_00000.png", "ca_00001.png"]
    with Image.open(tmp_path / "ca_00001.png") as img:
        assert img.size == (50, 30)


def test_scaled_strokes_keep_the_hole_ratio_of_256_and_change_nothing_at_256():
    def mean_ratio(size: int, scale_strokes: bool) -> float:
        return float(
            np.mean(
                [
                    masks.free_form_mask(
                        masks.mask_rng(0, i), size, size, scale_strokes=scale_strokes
                    ).mean()
                    for i in range(100)
                ]
            )
        )

    at_256 = mean_ratio(256, False)
    assert mean_ratio(64, False) > 0.9  # the reference's pixel sizes flood a small mask
    for size in (64, 128):
        assert abs(mean_ratio(size, True) - at_256) < 0.08, size
    for i in range(5):
        np.testing.assert_array_equal(
            masks.free_form_mask(masks.mask_rng(3, i), 256, 256, scale_strokes=True),
            masks.free_form_mask(masks.mask_rng(3, i), 256, 256),
        )


@pytest.mark.parametrize("shape", masks.OBJECT_SHAPES)
def test_object_mask_is_one_object_sized_hole_inside_the_image(shape):
    ratios = []
    for seed in range(40):
        height, width = (120, 160) if seed % 2 else (200, 90)
        mask = masks.object_mask(np.random.default_rng(seed), height, width, shape)
        hole = mask > 0.5
        _, count = ndimage.label(hole)
        assert count == 1
        rows, cols = np.nonzero(hole)
        box_area = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert 0.45 <= (np.ptp(cols) + 1) / (np.ptp(rows) + 1) <= 2.2  # aspect within [1/2, 2]
        if shape == "box":
            assert hole.sum() == box_area
        else:  # an ellipse fills pi/4 of its box, and its box touches no corner pixel
            assert hole.sum() / box_area == pytest.approx(np.pi / 4, abs=0.06)
            assert not hole[rows.min(), cols.min()] and not hole[rows.max(), cols.max()]
        ratios.append(hole.mean())
    assert min(ratios) >= 0.028 and max(ratios) <= 0.082
    assert max(ratios) - min(ratios) > 0.03  # the area is drawn, not fixed
    again = masks.object_mask(np.random.default_rng(39), 120, 160, shape)
    np.testing.assert_array_equal(again, mask)
    with pytest.raises(ValueError, match="shape"):
        masks.object_mask(np.random.default_rng(0), 10, 10, "star")
