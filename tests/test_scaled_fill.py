"""The large-image path ("scaled" strategy), its path for strokes, the detail transfer, the
colour limit, shape buckets and warm_up.

Stand-in networks and the tiny generator at small sizes (tile 64), and one check with the
shipped model on a 400x300 synthetic photo: no sub-image grid and no colour cast in a sky.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import cv2
import numpy as np
import pytest

from benchmarks import full_size_fill
from benchmarks.full_size_fill import detrended_grid_excess, grid_excess, mean_colour_error
from deepgin_jax import blending, inference
from deepgin_jax.inference import Inpainter, strokes
from deepgin_jax.inference import buckets as shape_buckets
from deepgin_jax.inference import detail as detail_transfer
from deepgin_jax.inference import scaled as scaled_fill
from tests.inpainting_helpers import RecordingNetwork, tiny_checkpoint


def known_mean_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fills each input's hole with the mean colour of that input's known pixels."""
    known = 1.0 - mask
    mean = (masked * known).sum(axis=(1, 2), keepdims=True) / known.sum(axis=(1, 2), keepdims=True)
    return (masked * known + mean * mask).astype(np.float32)


def ellipse(height: int, width: int, centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    hole = np.zeros((height, width), np.uint8)
    cv2.ellipse(hole, centre, axes, 0, 0, 360, 1, -1)
    return hole.astype(bool)


def test_far_apart_holes_get_boxes_of_their_own_and_near_ones_share_one():
    hole = np.zeros((600, 800), bool)
    hole[100:140, 100:160] = True  # 40 x 60
    hole[400:430, 600:630] = True  # far away
    boxes = scaled_fill.context_boxes(hole, factor=2.0)
    assert len(boxes) == 2
    (box, bound), _ = sorted(boxes)
    assert bound == (100, 100, 140, 160)
    top, left, bottom, right = box
    assert (bottom - top, right - left) == (120, 120)  # square, twice the long side
    assert top <= 100 and bottom >= 140 and left <= 100 and right >= 160
    hole[150:160, 170:180] = True  # next to the first: its box overlaps the first's
    boxes = scaled_fill.context_boxes(hole, factor=2.0)
    assert sorted(bound for _, bound in boxes) == [(100, 100, 160, 180), (400, 600, 430, 630)]
    # At the border a box is shifted inside the image, and never larger than it.
    corner = np.zeros((100, 300), bool)
    corner[90:100, 0:80] = True
    [((top, left, bottom, right), _)] = scaled_fill.context_boxes(corner, factor=2.0)
    assert (top, left, bottom, right) == (0, 0, 100, 160)


def test_downscale_keeps_hole_values_out_and_marks_any_covered_pixel_a_hole():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), np.uint8)
    hole = np.zeros((90, 120), bool)
    hole[31:50, 40:41] = True  # one pixel wide: still a hole at a third of the size
    other = image.copy()
    other[hole] = 255 - other[hole]
    low, low_hole = scaled_fill.downscale_known(image, hole, (30, 40))
    low_other, _ = scaled_fill.downscale_known(other, hole, (30, 40))
    np.testing.assert_array_equal(low, low_other)
    assert low_hole[11:16, 13].all() and low_hole.sum() == 7
    assert (low[low_hole] == 1.0).all()  # white, as the network sees holes


def test_scaled_strategy_runs_each_hole_once_at_the_network_size():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (200, 300, 3), np.uint8)
    hole = np.zeros((200, 300), bool)
    hole[60:110, 40:100] = True
    hole[150:170, 240:270] = True  # far from the first: a box of its own
    network = RecordingNetwork(known_mean_network)
    inpainter = Inpainter.from_function(
        network, tile_size=64, max_batch=4, colour_match=False, detail=False
    )
    assert inpainter.strategy == "auto"
    out = inpainter.inpaint(image, hole)
    np.testing.assert_array_equal(out[~hole], image[~hole])
    # One input per hole, no sub-images: each box (3x the hole's long side: 180 and 90 px)
    # downscaled to 64.
    assert network.calls == [(2, 64, 64)]
    # Each hole gets (about) the mean of the known pixels of its own box.
    for (top, left, bottom, right), _ in inpainter._planner.boxes(hole):
        box = (slice(top, bottom), slice(left, right))
        mean = image[box][~hole[box]].mean(axis=0)
        inner = cv2.erode(hole[box].astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert np.abs(out[box][inner].astype(float) - mean).max() <= 3


def test_scaled_strategy_blends_as_every_planner_and_pastes_beyond_the_poisson_limit(
    caplog, monkeypatch
):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (200, 300, 3), np.uint8)
    hole = np.zeros((200, 300), bool)
    hole[60:110, 40:100] = True
    options = {"tile_size": 64, "max_batch": 4, "colour_match": False}
    pasted = Inpainter.from_function(known_mean_network, **options).inpaint(image, hole)
    poisson = Inpainter.from_function(known_mean_network, blend="poisson", **options)
    assert (poisson.inpaint(image, hole)[hole] != pasted[hole]).any()
    with caplog.at_level(logging.WARNING), monkeypatch.context() as patch:
        patch.setattr(blending, "POISSON_MAX_PIXELS", int(hole.sum()) - 1)
        np.testing.assert_array_equal(poisson.inpaint(image, hole), pasted)
    assert "more than the Poisson blend solves" in caplog.text


def test_hole_width_and_degrid_remove_only_the_phase_offsets():
    band = np.zeros((100, 100), bool)
    band[40:50] = True  # a 10 px brush stroke
    assert 9 <= strokes.hole_width(band) <= 12
    box = np.zeros((100, 100), bool)
    box[20:60, 20:60] = True
    assert 25 <= strokes.hole_width(box) <= 35
    # A fill with fine texture (noise) and, per phase of a 3 x 4 split, an offset that drifts
    # slowly over the image: the grid independent sub-image fills leave.
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[:96, :128]
    clean = 0.4 + 0.2 * rows / 96.0 + rng.uniform(-0.05, 0.05, (96, 128))
    drift = np.sin(rows / 30.0 + cols / 40.0)
    offsets = rng.uniform(-0.05, 0.05, (3, 4))
    gridded = clean + offsets[rows % 3, cols % 4] * (1.0 + 0.5 * drift)
    hole = np.zeros((96, 128), bool)
    hole[20:80, 10:120] = True
    as_rgb = lambda a: np.repeat(a[..., None], 3, axis=-1).astype(np.float32)  # noqa: E731
    out = strokes.degrid(as_rgb(gridded), hole, (3, 4))
    np.testing.assert_array_equal(out[~hole], as_rgb(gridded)[~hole])
    before = np.abs(as_rgb(gridded) - as_rgb(clean))[hole].mean()
    after = np.abs(out - as_rgb(clean))[hole].mean()
    assert after < 0.3 * before, (before, after)


def test_detrended_grid_reads_a_grid_but_not_a_gradient_across_the_hole():
    rng = np.random.default_rng(6)
    cols = np.arange(64)[None, :, None]
    ramp = np.broadcast_to(40.0 + 3.0 * cols, (64, 64, 3))
    original = np.clip(ramp + rng.normal(0, 4, (64, 64, 3)), 0, 255)
    hole = np.zeros((64, 64), bool)
    hole[10:51, 12:47] = True  # 41 x 35: no side a multiple of the periods
    smooth = np.where(hole[..., None], ramp, original)
    # The raw phase means of a smooth ramp differ (one phase holds an extra, brighter column);
    # the detrended ones do not, and the smooth fill has no grid beyond the photo's.
    assert full_size_fill.phase_spread(ramp, hole, 8) > 0.25
    assert full_size_fill.detrended_spread(ramp, hole, 8) < 0.05
    assert detrended_grid_excess(smooth, original, hole) < 0.1
    stripes = 2.0 * (np.arange(64) % 4 < 2)[None, :, None]  # period 4, 2 grey levels
    gridded = smooth + np.where(hole[..., None], stripes, 0.0)
    assert detrended_grid_excess(gridded, original, hole) > 1.0


def two_tone_strokes(brush: int) -> tuple[np.ndarray, np.ndarray]:
    """192x256: grey 50 on the left half, 200 on the right, with light noise; two horizontal
    strokes `brush` px wide across the whole photo (one group, whose box is the photo)."""
    rng = np.random.default_rng(4)
    image = np.where(np.arange(256)[None, :, None] < 128, 50.0, 200.0) + rng.normal(
        0, 3, (192, 256, 3)
    )
    hole = np.zeros((192, 256), bool)
    for row in (60, 130):
        hole[row : row + brush, 10:246] = True
    hole[60:130, 120 : 120 + brush] = True  # joins them
    return np.clip(image, 0, 255).astype(np.uint8), hole


class PhaseOffsetNetwork:
    """Fills each input's hole with its known mean plus 0.1 on every other call: independent
    sub-image fills that disagree, as a real network's do."""

    def __init__(self):
        self.calls = 0

    def __call__(self, masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.calls += 1
        filled = known_mean_network(masked, mask)
        return np.clip(filled + 0.1 * (self.calls % 2) * mask, 0.0, 1.0).astype(np.float32)


def test_thin_strokes_go_through_subimages_of_real_pixels_without_grid(monkeypatch):
    image, hole = two_tone_strokes(6)
    inputs, grids = {}, {}
    for path, degrid in ((True, True), (True, False), (False, True)):
        network = RecordingNetwork(PhaseOffsetNetwork())
        inpainter = Inpainter.from_function(
            network,
            tile_size=64,
            max_batch=1,
            colour_match=False,
            detail=False,
            stroke_fill="polyphase",
        )
        inpainter._planner = dataclasses.replace(inpainter._planner, strokes=path)
        with monkeypatch.context() as patch:
            if not degrid:
                patch.setattr(strokes, "degrid", lambda fill, hole, factors: fill)
            out = inpainter.inpaint(image, hole)
        np.testing.assert_array_equal(out[~hole], image[~hole])
        inputs[path] = network.inputs
        grids[path, degrid] = grid_excess(out, image, hole)
    # Downscaled to 64 px, the 6 px strokes would be under 2 px wide (below the 8 px brushes
    # the network knows): the photo goes whole into 3 x 4 polyphase sub-images instead, whose
    # known pixels are the photo's own, none resampled.
    assert len(inputs[False]) == 1 and len(inputs[True]) == 12
    photo = image.astype(np.float32) / 255.0
    for k, (masked, mask) in enumerate(inputs[True]):
        q, p = divmod(k, 4)
        known = mask[0, ..., 0] < 0.5
        np.testing.assert_allclose(masked[0][known], photo[q::3, p::4][known], atol=1e-6)
    # The sub-images' disagreement is a grid of about 0.1 x 255 / 2 grey levels; de-gridded, none.
    assert grids[True, False] > 5 and grids[True, True] < 0.5, grids


def test_tiles_cover_the_image_with_weights_that_sum_to_one():
    shape = (100, 150)
    windows = strokes.tile_windows(shape, 64)
    # At most 48 px apart (3/4 of the tile), evenly: 2 rows and 3 columns of tiles.
    assert sorted({(r.start, c.start) for r, c in windows}) == [
        (top, left) for top in (0, 36) for left in (0, 43, 86)
    ]
    assert all(r.stop - r.start == 64 and c.stop - c.start == 64 for r, c in windows)
    weights = strokes.tile_weights(shape, windows)
    total = np.zeros(shape)
    for weight, window in zip(weights, windows, strict=True):
        total[window] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # Smooth: a tile's weight changes by little from pixel to pixel (no seam).
    assert max(np.abs(np.diff(w, axis=a)).max() for w in weights for a in (0, 1)) < 0.1
    # A smaller image is one tile of its own size; blending identical fills gives them back.
    assert strokes.tile_windows((40, 50), 64) == [(slice(0, 40), slice(0, 50))]
    fill = np.random.default_rng(0).random((*shape, 3)).astype(np.float32)
    blended = strokes.blend_tiles([fill[w] for w in windows], windows, shape)
    np.testing.assert_allclose(blended, fill, atol=1e-5)


def test_tile_scale_brings_the_brushes_to_the_width_the_network_knows():
    # The network's brushes are 8 px at a 64 px input (STROKE_FRACTION).
    for brush, expected in ((6, 1.0), (16, 0.5), (32, 0.25)):
        hole = np.zeros((256, 256), bool)
        hole[100 : 100 + brush, 20:236] = True
        width = strokes.hole_width(hole)
        assert abs(width - brush) <= 0.15 * brush, (brush, width)
        assert strokes.tile_scale(hole, 64) == pytest.approx(min(1.0, 8 / width))
        assert strokes.tile_scale(hole, 64) == pytest.approx(expected, rel=0.15)


def test_thin_strokes_go_through_overlapping_tiles_without_grid():
    image, hole = two_tone_strokes(6)
    network = RecordingNetwork(PhaseOffsetNetwork())
    inpainter = Inpainter.from_function(
        network, tile_size=64, max_batch=1, colour_match=False, detail=False
    )
    assert inpainter._planner.stroke_fill == "tiles"  # the default
    out = inpainter.inpaint(image, hole)
    np.testing.assert_array_equal(out[~hole], image[~hole])
    # 6 px strokes are narrower than the 8 px brushes the network knows at 64 px: the photo is
    # not downscaled, and each tile that holds hole pixels goes to the network with the
    # photo's own pixels.
    windows = [w for w in strokes.tile_windows(hole.shape, 64) if hole[w].any()]
    assert len(network.inputs) == len(windows) > 4
    photo = image.astype(np.float32) / 255.0
    for (masked, mask), window in zip(network.inputs, windows, strict=True):
        np.testing.assert_array_equal(mask[0, ..., 0] > 0.5, hole[window])
        known = mask[0, ..., 0] < 0.5
        np.testing.assert_allclose(masked[0][known], photo[window][known], atol=1e-6)
    # Neighbouring tiles' fills differ (their known means, and 0.1 x 255 grey levels every
    # other call); blended, no grid and no seam: along a stroke the fill moves from one tile's
    # to the next over many pixels (a seam would be a step of the whole difference).
    assert grid_excess(out, image, hole) < 0.5
    along = out[60:66, 10:246].astype(np.float64).mean(axis=(0, 2))
    assert np.abs(np.diff(along)).max() < 0.15 * np.ptp(along), along


def test_detail_scale_and_phase_neutral_reach_the_detail_of_each_path(monkeypatch):
    """Object holes take the detail above 1/DETAIL_FACTOR of the low-resolution scale, tiled
    strokes above a third of the tiles' scale; both without the local phase offsets."""
    calls = []
    transfer = detail_transfer.transfer_detail

    def recording(low_fill, residual, hole, **options):
        calls.append((low_fill.shape[:2], options.get("neutral_periods")))
        return transfer(low_fill, residual, hole, **options)

    monkeypatch.setattr(detail_transfer, "transfer_detail", recording)
    options = dict(tile_size=64, max_batch=4, colour_match=False)
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (200, 300, 3), np.uint8)
    hole = np.zeros((200, 300), bool)
    hole[60:110, 40:100] = True  # its box: 180 px, downscaled to 64
    Inpainter.from_function(known_mean_network, **options).inpaint(image, hole)
    image, strokes_hole = two_tone_strokes(6)
    Inpainter.from_function(known_mean_network, **options).inpaint(image, strokes_hole)
    factor = scaled_fill.DETAIL_FACTOR
    assert calls == [
        ((64 // factor, 64 // factor), detail_transfer.NEUTRAL_PERIODS),
        (
            tuple(n // strokes.TILE_DETAIL_FACTOR for n in strokes_hole.shape),
            detail_transfer.NEUTRAL_PERIODS,
        ),
    ]


def test_finish_fill_waits_for_the_preparation_only_when_the_blend_needs_it(monkeypatch):
    events = []
    transfer = detail_transfer.transfer_detail

    def recording(*args, **options):
        events.append("detail")
        return transfer(*args, **options)

    monkeypatch.setattr(detail_transfer, "transfer_detail", recording)
    photo = np.random.default_rng(5).random((96, 96, 3)).astype(np.float32)
    hole = np.zeros((96, 96), bool)
    hole[30:60, 30:66] = True
    low, low_hole = scaled_fill.downscale_known(photo, hole, (48, 48))
    low_filled = np.where(low_hole[..., None], low[~low_hole].mean(axis=0), low)

    made = scaled_fill.prepare_box(photo, hole, blend="poisson", colour=True)
    prepared = scaled_fill.PendingPreparation(
        lambda: events.append("system") or made.system,
        lambda: events.append("targets") or (made.membrane, made.telea),
    )
    blend = blending.poisson_and_membrane
    monkeypatch.setattr(
        blending, "poisson_and_membrane", lambda *a, **k: events.append("blend") or blend(*a, **k)
    )
    waited = scaled_fill.finish_fill(
        photo, hole, low_filled, detail=True, blend="poisson", colour=True, prepared=prepared
    )
    # The colour targets are waited for only after the blend's solve.
    assert events == ["detail", "system", "blend", "targets"]
    made_here = scaled_fill.finish_fill(
        photo, hole, low_filled, detail=True, blend="poisson", colour=True
    )
    np.testing.assert_array_equal(waited, made_here)


def test_colour_limit_keeps_the_fill_near_the_colour_the_border_predicts(monkeypatch):
    photo = np.full((64, 64, 3), 0.5, np.float32)
    photo[:, 32:] = 0.6
    hole = np.zeros((64, 64), bool)
    hole[16:48, 16:48] = True
    green = np.where(hole[..., None], np.array([0.3, 0.8, 0.3], np.float32), photo)
    lab = cv2.cvtColor(photo, cv2.COLOR_RGB2LAB)
    membrane = scaled_fill.membrane_colour(photo, hole)
    telea = scaled_fill.telea_colour(photo, hole)
    # Both predictions lie between the two greys; the green cast is far from either.
    for target in (membrane, telea):
        assert lab[:, 0, 0].mean() - 0.5 < target[0] < lab[:, -1, 0].mean() + 0.5
    limited = scaled_fill.colour_limited(green, hole, membrane)
    mean = cv2.cvtColor(limited, cv2.COLOR_RGB2LAB)[hole].mean(axis=0)
    assert np.linalg.norm(mean - membrane) <= scaled_fill.COLOUR_TOLERANCE + 0.05
    np.testing.assert_array_equal(limited[~hole], green[~hole])
    # The correction vanishes at the hole's border, so the fill's own border pixels stay.
    assert np.abs(limited[16, 16:48] - green[16, 16:48]).max() < 0.15
    # In the full path; a hole beyond COLOUR_MAX_PIXELS is predicted from a smaller copy.
    solved = []
    factorise = blending.hole_system
    monkeypatch.setattr(scaled_fill, "COLOUR_MAX_PIXELS", 256)
    monkeypatch.setattr(
        blending, "hole_system", lambda h: solved.append(int(h.sum())) or factorise(h)
    )
    out = scaled_fill.finish_fill(photo, hole, green, detail=False, blend="paste", colour=True)
    assert solved and max(solved) <= 300, solved
    mean = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[hole].mean(axis=0)
    assert np.linalg.norm(mean - membrane) <= 1.5, (mean, membrane)


def test_the_colour_limits_predictions_need_only_the_holes_surroundings():
    rng = np.random.default_rng(3)
    photo = cv2.GaussianBlur(rng.random((90, 120, 3)).astype(np.float32), (0, 0), 3)
    hole = np.zeros((90, 120), bool)
    hole[30:55, 40:75] = True
    # Telea's fill of the hole's neighbourhood alone is its fill of the whole box.
    pixels = np.round(photo * 255.0).astype(np.uint8)
    whole = cv2.inpaint(pixels, hole.astype(np.uint8), scaled_fill.TELEA_RADIUS, cv2.INPAINT_TELEA)
    expected = cv2.cvtColor(whole.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[hole].mean(0)
    np.testing.assert_allclose(scaled_fill.telea_colour(photo, hole), expected, atol=1e-4)
    # With the Poisson blend, the membrane is solved with it; the same fill either way.
    fill = photo.copy()
    fill[36:50, 48:68] += np.array([-0.1, 0.3, -0.1], np.float32)  # a green cast the blend keeps
    shared = scaled_fill.finish_fill(photo, hole, fill, detail=False, blend="poisson", colour=True)
    blended = blending.poisson(photo, hole, fill)
    separate = scaled_fill.colour_limited(blended, hole, scaled_fill.membrane_colour(photo, hole))
    telea = scaled_fill.telea_colour(photo, hole)
    separate = scaled_fill.colour_limited(separate, hole, telea, scaled_fill.TELEA_TOLERANCE)
    np.testing.assert_allclose(shared, np.where(hole[..., None], separate, photo), atol=1e-6)
    # Prepared beforehand (the planner does it while the network runs), the same fill.
    options = {"detail": False, "blend": "poisson", "colour": True}
    prepared = scaled_fill.prepare_box(photo, hole, blend="poisson", colour=True)
    assert prepared.system is not None and prepared.membrane is not None
    ahead = scaled_fill.finish_fill(photo, hole, fill, prepared=prepared, **options)
    np.testing.assert_array_equal(ahead, shared)
    with pytest.raises(ValueError, match="hole"):
        scaled_fill.finish_fill(photo[1:], hole[1:], fill[1:], prepared=prepared, **options)
    assert np.abs(shared - photo)[hole].max() > 0.01  # the fill is in the hole


def test_the_membrane_target_comes_from_the_blends_system_before_the_finish(monkeypatch):
    """`colour_targets` solves the membrane with the blend's system, waited for after Telea's
    fill (in the planner, in a thread beside the network): the finish then solves the blend
    alone, and the target is the one the blend's own membrane gives."""
    rng = np.random.default_rng(6)
    photo = cv2.GaussianBlur(rng.random((80, 100, 3)).astype(np.float32), (0, 0), 3)
    hole = np.zeros((80, 100), bool)
    hole[20:50, 30:70] = True
    fill = photo + np.float32(0.2) * hole[..., None]
    system = blending.hole_system(hole)
    blended, membrane = blending.poisson_and_membrane(photo, hole, fill)
    expected = scaled_fill._lab(membrane).mean(axis=0)
    monkeypatch.setattr(blending, "hole_system", None)  # no other factorisation
    events = []
    telea_colour = scaled_fill.telea_colour
    monkeypatch.setattr(
        scaled_fill, "telea_colour", lambda p, h: events.append("telea") or telea_colour(p, h)
    )
    target, telea = scaled_fill.colour_targets(
        photo, hole, "poisson", lambda: events.append("system") or system
    )
    assert events == ["telea", "system"]
    np.testing.assert_allclose(target, expected, atol=1e-5)
    solves = []
    solve = blending.HoleSystem.solve
    monkeypatch.setattr(
        blending.HoleSystem, "solve", lambda self, p: solves.append(len(p)) or solve(self, p)
    )
    prepared = scaled_fill.BoxPreparation(system, target, telea)
    out = scaled_fill.finish_fill(
        photo, hole, fill, detail=False, blend="poisson", colour=True, prepared=prepared
    )
    assert solves == [1]  # the blend; the membrane was solved beforehand
    limited = scaled_fill.colour_limited(blended, hole, target)
    limited = scaled_fill.colour_limited(limited, hole, telea, scaled_fill.TELEA_TOLERANCE)
    np.testing.assert_allclose(out, np.where(hole[..., None], limited, photo), atol=1e-6)


def test_a_hole_beyond_the_telea_bound_still_gets_one_factorisation(monkeypatch):
    """Beyond `COLOUR_MAX_PIXELS` only Telea's fill is downscaled: the membrane is still the
    blend's own, at full resolution, from the one factorisation."""
    rng = np.random.default_rng(4)
    photo = cv2.GaussianBlur(rng.random((90, 120, 3)).astype(np.float32), (0, 0), 3)
    hole = np.zeros((90, 120), bool)
    hole[30:55, 40:75] = True
    fill = photo + np.float32(0.2) * hole[..., None]  # a cast for the limit to pull back
    monkeypatch.setattr(scaled_fill, "COLOUR_MAX_PIXELS", int(hole.sum()) // 4)
    factorised = []
    factorise = blending.hole_system
    monkeypatch.setattr(
        blending, "hole_system", lambda h: factorised.append(h.sum()) or factorise(h)
    )
    out = scaled_fill.finish_fill(photo, hole, fill, detail=False, blend="poisson", colour=True)
    assert factorised == [hole.sum()]
    blended, membrane = blending.poisson_and_membrane(photo, hole, fill)
    small_photo, small_hole = scaled_fill._at_most(photo, hole, scaled_fill.COLOUR_MAX_PIXELS)
    assert small_hole.sum() < hole.sum()  # Telea's fill is made on the smaller copy
    expected = scaled_fill.colour_limited(blended, hole, scaled_fill._lab(membrane).mean(axis=0))
    telea = scaled_fill.telea_colour(small_photo, small_hole)
    expected = scaled_fill.colour_limited(expected, hole, telea, scaled_fill.TELEA_TOLERANCE)
    np.testing.assert_allclose(out, np.where(hole[..., None], expected, photo), atol=1e-6)


def stripes(height: int, width: int) -> np.ndarray:
    """Vertical stripes of period 2 (0.3, 0.7) on a smooth ramp: float32 [H, W, 3]."""
    ramp = np.linspace(0.0, 0.1, width, dtype=np.float32)[None, :, None]
    texture = np.where(np.arange(width) % 2 == 0, 0.3, 0.7).astype(np.float32)[None, :, None]
    return np.broadcast_to(texture + ramp, (height, width, 3)).copy()


def test_detail_transfer_brings_the_matching_texture_into_the_hole():
    """Left half textured, right half flat, a hole in each, a low-resolution fill of the right
    colours without texture: the left hole gets the left half's texture, the right one none."""
    rng = np.random.default_rng(0)
    photo = np.full((128, 128, 3), 0.7, np.float32)
    photo[:, :64] = np.clip(0.3 + 0.1 * rng.standard_normal((128, 64, 1)), 0.0, 1.0)
    hole = np.zeros((128, 128), bool)
    hole[40:80, 12:44] = hole[40:80, 84:116] = True
    left, right = hole.copy(), hole.copy()
    left[:, 64:] = right[:, :64] = False
    low, low_hole = scaled_fill.downscale_known(photo, hole, (64, 64))
    low_filled = np.where(low_hole[..., None], 0.7, low)
    low_filled[:, :32] = np.where(low_hole[:, :32, None], 0.3, low[:, :32])
    smooth = scaled_fill.upsample(low_filled, hole.shape)
    residual = photo - smooth
    detail = detail_transfer.transfer_detail(low_filled, residual, hole, strength=1.0)
    assert detail.shape == photo.shape and detail.dtype == np.float32
    known_texture = residual[8:120, 4:56].std()  # kept by the variance-preserving mix
    assert 0.5 * known_texture < detail[left].std() < 1.5 * known_texture
    assert detail[right].std() < 0.05 * known_texture
    # In the full path, with and without the flag: only the hole changes, and gets texture.
    filled = {
        flag: scaled_fill.finish_fill(photo, hole, low_filled, detail=flag, blend="paste")
        for flag in (False, True)
    }
    for result in filled.values():
        np.testing.assert_array_equal(result[~hole], photo[~hole])
    assert filled[True][left].std() > 2.0 * filled[False][left].std()


def test_detail_for_strokes_is_taken_above_the_subimage_scale():
    """A polyphase fill at the box's own size is smooth at the sub-images' scale: measured
    against the composite itself the known region has no detail to give, measured against
    the composite at the sub-images' scale (`smooth_factors`) it has."""
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.standard_normal((128, 128, 3)).astype(np.float32), (0, 0), 1.0)
    photo = np.clip(0.5 + 0.1 / noise.std() * noise, 0.0, 1.0)
    hole = np.zeros((128, 128), bool)
    hole[60:66, 8:120] = True
    smooth = cv2.GaussianBlur(photo, (0, 0), 3.0)
    low_filled = np.where(hole[..., None], smooth, photo)
    added = {
        factors: np.abs(
            scaled_fill.finish_fill(
                photo, hole, low_filled, detail=True, blend="paste", smooth_factors=factors
            )
            - low_filled
        )[hole].mean()
        for factors in ((1, 1), (2, 2))
    }
    assert added[(1, 1)] < 1e-3 and added[(2, 2)] > 0.01, added


def test_detail_transfer_leaves_no_lattice_pattern():
    """A smooth fill makes every hole cell draw the same known patches; pasted on a fixed
    lattice they repeat at the cell's period, so the hole's polyphase phase means (periods
    2-8) spread by more than the detail's own standard deviation (1.1 times it). Overlapping
    cells read at random offsets leave a spread of about 0.4 times it."""
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.standard_normal((128, 128, 3)).astype(np.float32), (0, 0), 1.0)
    photo = np.clip(0.5 + 0.05 / noise.std() * noise, 0.0, 1.0)
    hole = np.zeros((128, 128), bool)
    hole[32:96, 32:96] = True
    low, low_hole = scaled_fill.downscale_known(photo, hole, (64, 64))
    low_filled = np.where(low_hole[..., None], low[~low_hole].mean(axis=0), low)
    residual = photo - scaled_fill.upsample(low_filled, hole.shape)
    # The patches' placement alone, without `phase_neutral`.
    detail = detail_transfer.transfer_detail(low_filled, residual, hole, neutral_periods=())
    spread, deviation = _phase_spread(detail, hole), detail[hole].std()
    assert deviation > 0.005  # there is detail
    assert spread < 0.7 * deviation, (spread, deviation)
    neutral = detail_transfer.transfer_detail(low_filled, residual, hole)
    assert neutral.dtype == np.float32
    assert _phase_spread(neutral, hole) < 0.5 * spread
    assert neutral[hole].std() > 0.9 * deviation  # the detail is kept
    np.testing.assert_array_equal(neutral[~hole], detail[~hole])


def _phase_spread(detail: np.ndarray, hole: np.ndarray) -> float:
    """The largest spread, over periods 2-8, of the means of the hole's polyphase phases of the
    detail's channel mean."""
    grey = detail.mean(axis=-1)[hole]
    rows, cols = np.nonzero(hole)
    spreads = []
    for period in range(2, 9):
        phase = (rows % period) * period + cols % period
        means = np.bincount(phase, grey) / np.bincount(phase)
        spreads.append(means.max() - means.min())
    return max(spreads)


def test_phase_neutral_removes_block_offsets_where_they_are_and_leaves_flat_parts_alone():
    rng = np.random.default_rng(1)
    detail = 0.02 * rng.standard_normal((120, 200, 3)).astype(np.float32)
    detail[::8, ::8] += 0.3  # 8x8 blocks, as copied from a JPEG
    detail[:, :100] = 0.0  # a flat part: no detail there
    hole = np.zeros((120, 200), bool)
    hole[10:110, 20:190] = True
    blocks = hole & (np.arange(200) >= 130)  # the blocks, away from the flat part
    assert _phase_spread(detail, blocks) > 0.3
    neutral = detail_transfer.phase_neutral(detail, hole)
    assert neutral.dtype == np.float32
    assert _phase_spread(neutral, blocks) < 0.01
    assert _phase_spread(neutral, hole) < 0.2 * _phase_spread(detail, hole)
    np.testing.assert_array_equal(neutral[~hole], detail[~hole])
    # The flat part stays flat: the offsets the windows see beside it are not pasted into it.
    assert np.abs(neutral[:, :96][hole[:, :96]]).max() < 2e-3
    assert abs(neutral[blocks].std() - 0.02) < 0.002  # the noise stays


def test_buckets_and_batch_sizes():
    assert shape_buckets.default_buckets(256, 256) == (64, 128, 192, 256)
    assert shape_buckets.default_buckets(64, 64) == (16, 32, 48, 64)
    assert shape_buckets.bucket_shape(40, 56, (16, 32, 64)) == (64, 64)
    assert shape_buckets.bucket_shape(16, 8, (16, 32, 64)) == (16, 16)
    assert shape_buckets.bucket_shape(80, 64, (16, 32, 64)) == (80, 64)  # none holds it
    assert shape_buckets.batch_sizes(4) == (1, 2, 4)
    assert shape_buckets.batch_sizes(6) == (1, 2, 4, 6)
    padded = shape_buckets.pad_to(np.arange(6).reshape(2, 3), 4, 5)
    np.testing.assert_array_equal(padded[:2, :3], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(padded[2], padded[0])  # mirrored


def test_after_warm_up_new_holes_in_new_photos_compile_nothing():
    inpainter = Inpainter.from_checkpoint(
        tiny_checkpoint(), tile_size=32, max_batch=2, buckets=(16, 32)
    )
    reports = []
    worker = threading.Thread(target=inpainter.warm_up, args=(lambda *a: reports.append(a),))
    worker.start()
    worker.join()
    assert reports == [(k, 4) for k in range(1, 5)]  # 2 sides x batches of 1 and 2
    compiled = inference.forward_cache_size()
    rng = np.random.default_rng(2)
    for height, width in [(64, 64), (37, 53), (120, 90), (300, 200), (500, 700)]:
        image = rng.integers(0, 256, (height, width, 3), np.uint8)
        for _ in range(2):
            hole = np.zeros((height, width), bool)
            h, w = rng.integers(3, height // 3), rng.integers(3, width // 3)
            top, left = rng.integers(0, height - h), rng.integers(0, width - w)
            hole[top : top + h, left : left + w] = True
            hole[rng.integers(0, height), :] = True  # and a stroke across the photo
            out = inpainter.inpaint(image, hole)
            np.testing.assert_array_equal(out[~hole], image[~hole])
    assert inference.forward_cache_size() == compiled
    assert {shape[1:] for shape in inpainter.batch_shapes} <= {(16, 16), (32, 32)}


def sky_photo() -> tuple[np.ndarray, np.ndarray]:
    """400x300: a flat blue sky with a slight gradient over green, textured ground, and an
    ellipse hole in the sky large enough that the old crop is split into sub-images."""
    rng = np.random.default_rng(3)
    height, width = 300, 400
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = np.array([70, 130, 220]) + rows * np.array([30, 30, 20])
    ground = np.array([70, 110, 40]) + rng.normal(0, 12, (height, width, 3))
    photo = np.where(np.arange(height)[:, None, None] < 200, sky, ground)
    photo = np.clip(photo + rng.normal(0, 1.0, photo.shape), 0, 255).astype(np.uint8)
    return photo, ellipse(height, width, (200, 95), (90, 55))


def test_shipped_model_fills_a_sky_without_grid_or_colour_cast():
    # The polyphase path fails both: grid 0.83, colour 5.4 (measured).
    photo, hole = sky_photo()
    out = Inpainter(max_batch=2).inpaint(photo, hole)
    grid, colour = grid_excess(out, photo, hole), mean_colour_error(out, photo, hole)
    assert grid <= 0.25 and colour <= 2.3, (grid, colour)


def test_stroke_fill_option_is_checked_and_needs_the_scaled_strategy():
    assert inference.InpaintOptions().resolved().stroke_fill == "tiles"
    assert inference.InpaintOptions(strategy="crop").resolved().stroke_fill is None
    with pytest.raises(ValueError, match="stroke_fill must be one of"):
        Inpainter.from_function(known_mean_network, stroke_fill="sub-images")
    with pytest.raises(ValueError, match="stroke_fill='polyphase' cannot apply"):
        Inpainter.from_function(known_mean_network, strategy="whole", stroke_fill="polyphase")


def test_detail_flag_reaches_the_inpainter_options_and_needs_the_scaled_strategy():
    from absl import flags

    from deepgin_jax import cli, inpaint

    for argv, given, resolved in (
        ([], None, True),
        (["--detail"], True, True),
        (["--nodetail"], False, False),
    ):
        flag_values = flags.FlagValues()
        inpaint.define_flags(flag_values)
        flag_values(["inpaint", "--image=x", "--output=y", *argv])
        options = cli.inpainter_options(flag_values)["options"]
        assert options.detail is given
        assert options.resolved().detail is resolved  # on by default with "scaled"
        assert cli.inpainter_flags_problem(flag_values) is None
    assert inference.InpaintOptions(strategy="polyphase").resolved().detail is None
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(["inpaint", "--image=x", "--output=y", "--detail", "--strategy=polyphase"])
    problem = cli.inpainter_flags_problem(flag_values)
    assert problem is not None and "--[no]detail" in problem and "'polyphase'" in problem


def test_full_size_fill_pairs_methods_by_photo_with_bootstrap_intervals():
    rows = [
        {"photo": f"{k}.jpg", "kind": "strokes", "method": method, "psnr": psnr, "lpips": lp}
        for k in range(6)
        for method, psnr, lp in (("a", 20.0 + k, 0.2), ("b", 19.0 + k + 0.1 * (k % 2), 0.25))
    ]
    table = full_size_fill.paired_summary(rows, ["a", "b"], ["b"])
    [line] = [row for row in table.splitlines() if "| a | b |" in row]
    # a - b per photo: PSNR 1.0 or 0.9 (mean 0.95, the interval inside the range), LPIPS -0.05.
    assert line.startswith("| strokes | a | b | 6 | +0.950 [")
    assert line.endswith("| -0.050 [-0.050, -0.050] |")
    low, high = (float(v) for v in line.split("[")[1].split("]")[0].split(","))
    assert 0.9 <= low < 0.95 < high <= 1.0, line
