"""`make demo`'s first half: the bundled photos inpainted with the shipped model beside Telea."""

from __future__ import annotations

import numpy as np

from deepgin_jax import demo, image_io, shipped
from deepgin_jax.data import sample_image_paths
from tests.inpainting_helpers import tiny_shipped


def test_demo_inpaints_every_bundled_photo_with_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    scores = demo.inpaint_samples(tmp_path, row_height=48)
    comparison = image_io.read_rgb(tmp_path / "comparison.png")
    assert comparison.shape[0] == len(sample_image_paths()) * (48 + 4)
    assert set(scores) == {"deepgin_hole_psnr", "telea_hole_psnr"}
    assert all(np.isfinite(v) and v > 5 for v in scores.values()), scores


def test_demo_mask_is_a_box_and_strokes_inside_the_photo():
    hole = demo.demo_mask(300, 451, seed=0)
    assert hole.shape == (300, 451) and hole.dtype == bool
    assert 0.04 < hole.mean() < 0.4
    assert not hole[:, :20].all()


def test_demo_command_reports_a_usage_error_in_one_line():
    """The demo starts through `cli.run`: a stray argument is one line and exit status 2,
    before any work, with no traceback and no backend-probe noise."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "deepgin_jax.demo", "stray"], capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "unexpected arguments: ['stray']" in result.stderr
    assert "Traceback" not in result.stderr and "libtpu" not in result.stderr
