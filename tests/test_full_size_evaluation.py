"""Evaluation at the photos' own size: the drawn holes, the crop around a hole, the bootstrap
summaries, and the whole command on small photos with Telea, biharmonic and a small random
LPIPS network."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from absl import app, flags
from PIL import Image

from deepgin_jax import evaluate, evaluation, full_size_evaluation, metrics
from deepgin_jax.baselines import make_baseline
from tests.inpainting_helpers import write_lpips_file
from tests.test_evaluate import smooth_image


def test_photo_holes_are_seeded_and_of_their_kind():
    holes = {k: full_size_evaluation.photo_hole(k, 120, 160, 0, 3) for k in ("ellipse", "box")}
    for kind, hole in holes.items():
        assert hole.dtype == bool and 0.028 <= hole.mean() <= 0.082, kind
        again = full_size_evaluation.photo_hole(kind, 120, 160, 0, 3)
        np.testing.assert_array_equal(again, hole)
        other = full_size_evaluation.photo_hole(kind, 120, 160, 0, 4)  # another photo
        assert not np.array_equal(other, hole)
    assert not np.array_equal(holes["ellipse"], holes["box"])
    # Strokes scaled to the photo cover about as much of a big photo as of a 256 crop.
    strokes = full_size_evaluation.photo_hole("strokes", 512, 683, 0, 0)
    assert 0.15 < strokes.mean() < 0.6
    with pytest.raises(ValueError, match="hole kind"):
        full_size_evaluation.photo_hole("ring", 10, 10, 0, 0)


def test_crop_around_a_hole_is_twice_its_box_and_stays_inside():
    hole = np.zeros((100, 200), bool)
    hole[40:50, 60:80] = True  # 10 x 20: a 40-pixel square centred on it
    rows, cols = full_size_evaluation.crop_around(hole)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (25, 65, 50, 90)
    corner = np.zeros((100, 200), bool)
    corner[0:30, 185:200] = True  # a 60 square, shifted inside the photo
    rows, cols = full_size_evaluation.crop_around(corner)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 60, 140, 200)
    wide = np.zeros((100, 200), bool)
    wide[50, 10:190] = True  # at most the shorter side
    rows, cols = full_size_evaluation.crop_around(wide)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (100, 100)
    crop = full_size_evaluation.lpips_crops(smooth_image(100, 200, 0), hole, size=32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).normal(5.0, 1.0, 50)
    low, high = full_size_evaluation.bootstrap_interval(values)
    assert low < values.mean() < high
    assert 0.1 < high - low < 1.0  # about 2 * 1.96 / sqrt(50) = 0.55
    assert full_size_evaluation.bootstrap_interval(values[:1]) == (None, None)
    assert full_size_evaluation.bootstrap_interval(np.full(4, 2.0)) == (2.0, 2.0)


def test_summary_pairs_the_methods_hole_by_hole():
    rng = np.random.default_rng(0)
    base = rng.normal(20.0, 3.0, 8)  # the photos differ far more than the methods
    rows = []
    for index, value in enumerate(base):
        for method, shift in (("ref", 0.0), ("better", 0.5)):
            rows.append(
                {
                    "method": method,
                    "image": f"{index}.png",
                    "hole": "box" if index % 2 else "ellipse",
                    "hole_psnr": value + shift + rng.normal(0, 0.05),
                }
            )
    rows[0]["hole_psnr"] = float("inf")  # an exact fill: left out, and counted
    summary = full_size_evaluation.summarise(rows, ["ref", "better"], ["ellipse", "box"])
    assert summary["groups"] == ["ellipse", "box", "all"]
    cell = summary["methods"]["better"]["all"]["hole_psnr"]
    assert cell["difference"] == pytest.approx(0.5, abs=0.06)
    # Paired, the difference is sure; the unpaired intervals overlap.
    assert 0.4 < cell["difference_low"] < cell["difference_high"] < 0.6
    ref = summary["methods"]["ref"]["all"]["hole_psnr"]
    assert ref["high"] > cell["low"]
    assert ref["infinite"] == 1 and summary["methods"]["ref"]["all"]["count"] == 8
    assert ref["mean"] == pytest.approx(np.mean(base[1:]), abs=0.05)
    assert "difference" not in ref  # the reference is not compared with itself
    markdown = full_size_evaluation.results_markdown(summary)
    assert "| better − ref | 0.5" in markdown and "## box (n=4)" in markdown


class RecordingBaseline:
    """Telea that keeps what it was given."""

    def __init__(self):
        self.telea = make_baseline("telea")
        self.inputs: list[np.ndarray] = []

    def inpaint_many(self, images, holes):
        self.inputs += [np.asarray(image).copy() for image in images]
        return self.telea.inpaint_many(images, holes)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_size")
    folder = root / "photos"
    folder.mkdir()
    for index, (height, width) in enumerate([(48, 64), (64, 40), (56, 56)]):
        Image.fromarray(smooth_image(height, width, index)).save(folder / f"{index}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    write_lpips_file(root / "weights" / evaluation.LPIPS_FILES["vgg"])
    return root


def test_full_size_command_scores_every_photo_at_its_size(photos, tmp_path, monkeypatch):
    recorder = RecordingBaseline()

    def build_methods(checkpoints, baselines, **options):  # no model: the recorder first
        assert checkpoints == [] and options["radius"] == 3.0
        return {"recorded telea": recorder, **{b: make_baseline(b) for b in baselines}}

    monkeypatch.setattr(evaluation, "build_methods", build_methods)
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(
        [
            "evaluate",
            "--full_size",
            f"--images={photos / 'photos'}",
            f"--output={tmp_path}",
            "--baselines=biharmonic",
            f"--weights={photos / 'weights'}",
            "--bootstrap=200",
        ]
    )
    summary = evaluate.run(flag_values)
    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 3  # methods x readable photos x hole kinds
    assert {(r["height"], r["width"]) for r in rows} == {("48", "64"), ("64", "40"), ("56", "56")}
    assert summary["protocol"]["unreadable_images"][0]["image"] == "broken.png"
    # No method saw the truth: the hole was white.
    recorded = [r for r in rows if r["method"] == "recorded telea"]
    for image, row in zip(recorder.inputs, recorded, strict=True):
        original = smooth_image(int(row["height"]), int(row["width"]), int(row["image"][0]))
        hole = full_size_evaluation.photo_hole(
            row["hole"], *original.shape[:2], 0, int(row["image"][0])
        )
        assert (image[hole] == evaluation.HOLE_FILL).all()
        np.testing.assert_array_equal(image[~hole], original[~hole])
        assert float(row["grid_excess"]) == pytest.approx(
            metrics.grid_spread(make_baseline("telea").inpaint(image, hole), original, hole),
            abs=1e-9,
        )
    for row in rows:
        assert float(row["lpips_crop"]) >= 0 and float(row["colour_error"]) >= 0
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["groups"] == ["ellipse", "box", "strokes", "all"]
    for metric in ("hole_psnr", "lpips_crop", "colour_error", "grid_excess"):
        cell = written["methods"]["biharmonic"]["all"][metric]
        assert cell["low"] <= cell["mean"] <= cell["high"]
        assert "difference_low" in cell
    markdown = (tmp_path / "results.md").read_text()
    assert "## strokes (n=3)" in markdown and "biharmonic − recorded telea" in markdown


def test_full_size_flags_are_checked(photos, tmp_path):
    for extra, message in (
        ([f"--masks={tmp_path}"], "leave out --masks"),
        (["--holes=ellipse,ring"], "unknown kind 'ring'"),
    ):
        flag_values = flags.FlagValues()
        evaluate.define_flags(flag_values)
        flag_values(
            [
                "evaluate",
                "--full_size",
                f"--images={photos / 'photos'}",
                f"--output={tmp_path}",
                *extra,
            ]
        )
        with pytest.raises(app.UsageError, match=message):
            evaluate.run(flag_values)
