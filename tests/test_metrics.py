"""PSNR, SSIM, L1 error and FID against hand / NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from deepgin_jax import metrics


def _pair(seed=0, shape=(2, 16, 16, 3)):
    rng = np.random.default_rng(seed)
    a = rng.random(shape).astype(np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return a, b


def test_psnr_and_l1_by_hand():
    target = np.zeros((2, 4, 4, 3), np.float32)
    pred = target.copy()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB, L1 0.1
    pred[1, :2] = 0.5  # half the pixels off by 0.5: MSE 0.125, L1 0.25
    np.testing.assert_allclose(metrics.psnr(pred, target), [20.0, 10 * np.log10(8.0)], rtol=1e-5)
    np.testing.assert_allclose(metrics.l1_error(pred, target), [0.1, 0.25], rtol=1e-6)
    np.testing.assert_allclose(metrics.l1_error_percent(pred, target), [10.0, 25.0], rtol=1e-5)
    assert np.isinf(np.asarray(metrics.psnr(target, target))).all()


def test_psnr_and_l1_match_numpy_and_accept_uint8():
    a, b = _pair()
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a, b), -10 * np.log10(mse), rtol=1e-5)
    np.testing.assert_allclose(
        metrics.l1_error(a, b), np.abs(a - b).mean(axis=(1, 2, 3)), rtol=1e-5
    )
    a8, b8 = np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8)
    np.testing.assert_allclose(
        metrics.psnr(a8, b8), metrics.psnr(a8 / np.float32(255), b8 / np.float32(255)), rtol=1e-6
    )
    mse8 = ((a8.astype(np.float64) - b8) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a8, b8), 10 * np.log10(255.0**2 / mse8), rtol=1e-5)


def _numpy_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM with an 11x11 Gaussian (sigma 1.5) 'valid' window, averaged over pixels/channels."""
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    g /= g.sum()

    def blur(x):  # [N, H, W, C] valid separable filter
        x = np.apply_along_axis(lambda r: np.convolve(r, g, "valid"), 1, x)
        return np.apply_along_axis(lambda r: np.convolve(r, g, "valid"), 2, x)

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ssim_map.mean(axis=(1, 2, 3))


def test_ssim_matches_numpy():
    a, b = _pair(shape=(2, 16, 20, 3))
    np.testing.assert_allclose(metrics.ssim(a, b), _numpy_ssim(a, b), rtol=1e-4)
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, rtol=1e-6)


def test_ssim_of_constant_images_by_hand():
    a = np.full((1, 12, 12, 3), 0.25, np.float32)
    b = np.full((1, 12, 12, 3), 0.75, np.float32)
    c1 = 0.01**2  # no variance: SSIM = luminance term only
    expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
    # Values exact in binary keep float32's spurious variance (against c2 = 9e-4) negligible.
    np.testing.assert_allclose(metrics.ssim(a, b), [expected], rtol=1e-5)


def test_metrics_reject_bad_shapes_and_types():
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 9, 3)))
    with pytest.raises(ValueError, match="one shape"):
        metrics.l1_error(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
    with pytest.raises(TypeError, match="dtype"):
        metrics.psnr(np.zeros((1, 8, 8, 3), np.int32), np.zeros((1, 8, 8, 3), np.int32))


def test_pixel_metrics_and_mean_accumulator():
    a, b = _pair(shape=(4, 16, 16, 3))
    accumulator = metrics.MeanAccumulator()
    accumulator.update(metrics.pixel_metrics(a[:3], b[:3]))
    accumulator.update(metrics.pixel_metrics(a[3:], b[3:]))
    whole = metrics.pixel_metrics(a, b)
    result = accumulator.result()
    assert set(result) == {"psnr", "ssim", "l1_percent"} and accumulator.count("psnr") == 4
    for name, values in whole.items():
        assert result[name] == pytest.approx(float(np.mean(values)), rel=1e-6)


def test_feature_statistics_stream_equals_numpy():
    rng = np.random.default_rng(0)
    features = 100.0 + rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    stats = metrics.FeatureStatistics(6)
    for batch in np.array_split(features, [7, 8, 30]):
        stats.update(batch)
    stats.update(np.zeros((0, 6)))
    assert stats.count == 50
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        stats.covariance, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12
    )
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        stats.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((1, 6), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        _ = metrics.FeatureStatistics(3).covariance


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(1).standard_normal((200, 8))
    assert metrics.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)
    # Fewer samples than dimensions: a singular covariance still gives ~0.
    few = np.random.default_rng(2).standard_normal((10, 32))
    assert metrics.fid_from_features(few, few) == pytest.approx(0.0, abs=1e-4)


def test_fid_of_shifted_gaussians_matches_closed_form():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 5))
    shift = np.array([0.5, -1.0, 2.0, 0.0, 0.25])
    # Same covariance: FID = |shift|^2 exactly.
    assert metrics.fid_from_features(features, features + shift) == pytest.approx(
        float(shift @ shift), rel=1e-8
    )
    # Diagonal covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_a, mu_b = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert metrics.frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(
        expected, rel=1e-10
    )


def test_fid_with_non_commuting_covariances_matches_symmetric_form():
    rng = np.random.default_rng(4)
    m_a, m_b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(4), m_b @ m_b.T + 0.1 * np.eye(4)
    mu_a, mu_b = rng.standard_normal(4), rng.standard_normal(4)
    # tr((A B)^(1/2)) = tr((A^(1/2) B A^(1/2))^(1/2)), computed with symmetric eigendecompositions.
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b) - 2 * np.sum(np.sqrt(inner))
    assert metrics.frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)
    assert np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real == pytest.approx(np.sum(np.sqrt(inner)))


def test_fid_of_rank_deficient_covariances_matches_the_general_square_root():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((20, 50)), 0.5 + 1.5 * rng.standard_normal((30, 50))  # N < dim
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b) - 2 * np.trace(root).real
    assert metrics.frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-6)


def test_fid_from_stats_equals_fid_from_features_and_checks_shapes():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((40, 3)), 1.0 + 2.0 * rng.standard_normal((30, 3))
    stats_a, stats_b = metrics.FeatureStatistics(3), metrics.FeatureStatistics(3)
    for chunk in np.array_split(a, 4):
        stats_a.update(chunk)
    stats_b.update(b)
    assert metrics.fid_from_stats(stats_a, stats_b) == pytest.approx(
        metrics.fid_from_features(a, b), rel=1e-10
    )
    with pytest.raises(ValueError, match="shapes do not match"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def _photo_and_hole(height=96, width=120, seed=0, noise=0.002):
    """Mid-tone gentle gradients with a little noise (float [H, W, 3] in [0.25, 0.75]) and an
    ellipse hole."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = 0.4 + 0.1 * rows[..., None] / height + 0.1 * cols[..., None] / width * rng.random(3)
    image = np.clip(base + noise * rng.standard_normal((height, width, 3)), 0.25, 0.75)
    hole = ((rows - height / 2) / (height / 3)) ** 2 + ((cols - width / 2) / (width / 4)) ** 2 < 1
    return image, hole


def test_grid_spread_sees_a_per_phase_offset_at_its_period_and_its_multiples():
    image, hole = _photo_and_hole()
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    gridded = image.copy()
    gridded[(rows % 2 == 0) & (cols % 2 == 0)] += 2 / 255  # every channel: 2 grey levels up
    for period in (2, 4):
        excess = metrics.phase_mean_spread(gridded, hole, period) - metrics.phase_mean_spread(
            image, hole, period
        )
        assert excess == pytest.approx(2.0, abs=0.35), period
    odd = metrics.phase_mean_spread(gridded, hole, 3) - metrics.phase_mean_spread(image, hole, 3)
    assert abs(odd) < 0.35  # period 3 mixes the offset phase into every phase
    assert metrics.grid_spread(gridded, image, hole) == pytest.approx(2.0, abs=0.35)
    assert metrics.grid_spread(image, image, hole) == 0.0
    as_uint8 = np.round(gridded * 255).astype(np.uint8)
    assert metrics.grid_spread(as_uint8, image, hole) == pytest.approx(2.0, abs=0.5)
    # Only the hole is measured: an offset outside it is not seen.
    outside = image.copy()
    outside[~hole & (rows % 2 == 0)] += 10 / 255
    assert metrics.grid_spread(outside, image, hole) == 0.0


def test_phase_mean_spread_by_hand():
    image = np.zeros((4, 4, 3), np.uint8)
    image[0::2, 1::2] = 10  # phase (0, 1) of period 2
    hole = np.ones((4, 4), bool)
    assert metrics.phase_mean_spread(image, hole, 2) == pytest.approx(10.0)
    assert metrics.phase_mean_spread(image, hole, 1) == 0.0  # one phase
    with pytest.raises(ValueError, match="empty"):
        metrics.phase_mean_spread(image, np.zeros((4, 4), bool), 2)


def test_hole_colour_error_is_the_cielab_shift_of_the_hole():
    from skimage import color

    image, hole = _photo_and_hole(seed=1, noise=0.03)
    lab = color.rgb2lab(image)
    tinted_lab = lab.copy()
    tinted_lab[hole, 1] += 5.0  # a* up by 5 inside the hole
    tinted = color.lab2rgb(tinted_lab)
    assert metrics.hole_colour_error(tinted, image, hole) == pytest.approx(5.0, abs=0.05)
    as_uint8 = np.round(tinted * 255).astype(np.uint8)
    assert metrics.hole_colour_error(as_uint8, image, hole) == pytest.approx(5.0, abs=0.3)
    shifted_lab = lab.copy()
    shifted_lab[hole, 0] += 3.0
    shifted_lab[hole, 2] -= 4.0
    shifted = color.lab2rgb(shifted_lab)
    assert metrics.hole_colour_error(shifted, image, hole) == pytest.approx(5.0, abs=0.05)
    # A change that keeps the hole's mean colour (a swap of two of its pixels) is no cast.
    swapped = image.copy()
    (r0, c0), (r1, c1) = np.argwhere(hole)[[0, -1]]
    swapped[r0, c0], swapped[r1, c1] = image[r1, c1], image[r0, c0]
    assert metrics.hole_colour_error(swapped, image, hole) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="does not match"):
        metrics.hole_colour_error(image, image, hole[:-1])
