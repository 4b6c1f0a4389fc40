"""DeepGIN's losses against NumPy / hand computations on tiny arrays (spec 5.1-5.2)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepgin_jax import losses
from deepgin_jax.models import vgg

RNG = np.random.default_rng(0)


def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def np_l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def np_hole_valid(pred, target, mask, hole=5.0, valid=1.0) -> float:
    mask = np.broadcast_to(mask, pred.shape)
    return hole * np_l1(mask * pred, mask * target) + valid * np_l1(
        (1 - mask) * pred, (1 - mask) * target
    )


def torch_downsample(x: np.ndarray, size: int) -> np.ndarray:
    """An independent align-corners bilinear resize (PyTorch's UpsamplingBilinear2d)."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)
    return out.numpy().transpose(0, 2, 3, 1)


@dataclasses.dataclass
class Outputs:
    completed: jax.Array
    reconstructed: jax.Array
    coarse: jax.Array
    lowres: jax.Array | None


def make_outputs(batch: int = 2, size: int = 20) -> tuple[Outputs, np.ndarray, np.ndarray]:
    target = uniform(batch, size, size, 3)
    mask = np.zeros((batch, size, size, 1), np.float32)
    mask[:, 5:10, 3:9] = 1.0
    reconstructed = uniform(batch, size, size, 3, low=-0.2, high=1.2)
    outputs = Outputs(
        completed=reconstructed * mask + target * (1 - mask),
        reconstructed=reconstructed,
        coarse=uniform(batch, size, size, 3),
        lowres=uniform(batch, size // 4, size // 4, 3),
    )
    return outputs, target, mask


# --------------------------------------------------------------------------------------------
# L1


def test_hole_valid_l1_matches_numpy_with_fractional_mask():
    pred, target = uniform(2, 5, 6, 3), uniform(2, 5, 6, 3)
    mask = uniform(2, 5, 6, 1)
    got = losses.hole_valid_l1(pred, target, mask, hole_weight=5.0, valid_weight=1.0)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), np_hole_valid(pred, target, mask), rtol=1e-6)


def test_l1_is_a_mean_over_all_elements_not_the_hole_area():
    # One hole pixel of 2x2, error 1 in each of its 3 channels: hole L1 = 3 / 12.
    pred = np.zeros((1, 2, 2, 3), np.float32)
    target = np.zeros_like(pred)
    target[0, 0, 0] = 1.0
    mask = np.zeros((1, 2, 2, 1), np.float32)
    mask[0, 0, 0] = 1.0
    assert float(losses.hole_valid_l1(pred, target, mask, 5.0, 1.0)) == pytest.approx(5 * 0.25)
    assert float(losses.hole_valid_l1(pred, target, 1 - mask, 5.0, 1.0)) == pytest.approx(0.25)


def test_output_l1_adds_the_lowres_terms_with_downsampled_target_and_mask():
    outputs, target, mask = make_outputs(size=20)
    got = losses.output_l1_loss(outputs.reconstructed, outputs.lowres, target, mask, 5.0, 1.0)
    target_lr, mask_lr = torch_downsample(target, 5), torch_downsample(mask, 5)
    assert np.any((mask_lr > 0) & (mask_lr < 1))  # fractional at the hole border
    expected = np_hole_valid(outputs.reconstructed, target, mask) + np_hole_valid(
        outputs.lowres, target_lr, mask_lr
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    without_lr = losses.output_l1_loss(outputs.reconstructed, None, target, mask, 5.0, 1.0)
    np.testing.assert_allclose(
        float(without_lr), np_hole_valid(outputs.reconstructed, target, mask), rtol=1e-6
    )


def test_coarse_l1():
    outputs, target, mask = make_outputs()
    got = losses.coarse_l1_loss(outputs.coarse, target, mask, 3.0, 0.5)
    np.testing.assert_allclose(
        float(got), np_hole_valid(outputs.coarse, target, mask, 3.0, 0.5), rtol=1e-6
    )


# --------------------------------------------------------------------------------------------
# Hinge


def test_hinge_generator_loss_by_hand():
    d1 = np.array([1.0, -3.0, 0.5, 0.5], np.float32).reshape(1, 2, 2, 1)  # mean -0.25
    d2 = np.array([2.0, 4.0], np.float32).reshape(1, 1, 1, 2)  # mean 3
    assert float(losses.hinge_generator_loss([d1, d2])) == pytest.approx(0.25 - 3.0)


def test_discriminator_loss_by_hand():
    real = [np.array([2.0, 0.0, -1.0, 0.5], np.float32).reshape(1, 2, 2, 1)]  # relu(1-x): 0,1,2,.5
    fake = [np.array([-2.0, 0.0, 1.0, -0.5], np.float32).reshape(1, 2, 2, 1)]  # relu(1+x): 0,1,2,.5
    real.append(np.full((1, 1, 1, 3), 3.0, np.float32))  # relu(1-3) = 0
    fake.append(np.full((1, 1, 1, 3), 3.0, np.float32))  # relu(1+3) = 4
    config = losses.default_loss_config()
    total, terms = losses.discriminator_loss(real, fake, config)
    assert float(terms["real"]) == pytest.approx(0.875)
    assert float(terms["fake"]) == pytest.approx(0.875 + 4.0)
    assert float(total) == pytest.approx(0.5 * (0.875 + 4.875))
    config.discriminator_scale = 1.0
    assert float(losses.discriminator_loss(real, fake, config)[0]) == pytest.approx(5.75)
    with pytest.raises(ValueError, match="scales"):
        losses.discriminator_loss(real, fake[:1], config)


# --------------------------------------------------------------------------------------------
# Gram, perceptual, style


def np_gram(f: np.ndarray) -> np.ndarray:
    b, h, w, c = f.shape
    flat = f.astype(np.float64).reshape(b, h * w, c).transpose(0, 2, 1)  # [B, C, HW]
    return flat @ flat.transpose(0, 2, 1) / (c * h * w)


def test_gram_matrix():
    f = uniform(2, 3, 4, 5, low=-1.0)
    np.testing.assert_allclose(np.asarray(losses.gram_matrix(f)), np_gram(f), rtol=1e-5)


def test_perceptual_and_style_distances():
    xs = [uniform(2, 4, 4, 3, low=-1.0), uniform(2, 2, 2, 6)]
    ys = [uniform(2, 4, 4, 3, low=-1.0), uniform(2, 2, 2, 6)]
    weights = (0.5, 2.0)
    got = losses.perceptual_distance(xs, ys, weights)
    expected = 0.5 * np_l1(xs[0], ys[0]) + 2.0 * np_l1(xs[1], ys[1])
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    diffs = [np_gram(x) - np_gram(y) for x, y in zip(xs, ys, strict=True)]
    mse = losses.style_distance(xs, ys, weights, "mse")
    np.testing.assert_allclose(
        float(mse), 0.5 * np.mean(diffs[0] ** 2) + 2.0 * np.mean(diffs[1] ** 2), rtol=1e-5
    )
    paper = losses.style_distance(xs, ys, weights, "l1")
    # Eq. 5: ||G(x) - G(y)||_1 / C^2 per sample, averaged over the batch.
    per_sample = [np.abs(d).sum(axis=(1, 2)) / d.shape[1] ** 2 for d in diffs]
    np.testing.assert_allclose(
        float(paper), 0.5 * per_sample[0].mean() + 2.0 * per_sample[1].mean(), rtol=1e-5
    )
    with pytest.raises(ValueError, match="2 VGG layer weights for 1"):
        losses.perceptual_distance(xs[:1], ys[:1], weights)


class RecordingFeatures:
    """A stand-in for the VGG: five maps built from x and its 2x2 average; records input shapes."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, images):
        self.calls.append(tuple(images.shape))
        b, h, w, c = images.shape
        pooled = images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return [images, pooled**2, 2 * images - 1, pooled, images**2]


def np_stand_in_features(images: np.ndarray) -> list[np.ndarray]:
    b, h, w, c = images.shape
    pooled = images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return [images, pooled**2, 2 * images - 1, pooled, images**2]


def test_vgg_losses_resize_once_per_image_and_run_target_once():
    outputs, target, _ = make_outputs(batch=2, size=20)
    features = RecordingFeatures()
    weights = (0.25, 1.0, 0.5, 2.0, 0.125)
    perceptual, style = losses.vgg_losses(
        features, (outputs.reconstructed, outputs.completed), target, weights, "mse", 8
    )
    assert features.calls == [(2, 8, 8, 3), (4, 8, 8, 3)]  # target alone, both candidates batched
    t = np_stand_in_features(torch_downsample(target, 8))
    expected_p, expected_s = 0.0, 0.0
    for candidate in (outputs.reconstructed, outputs.completed):
        c = np_stand_in_features(torch_downsample(candidate, 8))
        for w, fc, ft in zip(weights, c, t, strict=True):
            expected_p += w * np_l1(fc, ft)
            expected_s += w * np.mean((np_gram(fc) - np_gram(ft)) ** 2)
    np.testing.assert_allclose(float(perceptual), expected_p, rtol=1e-5)
    np.testing.assert_allclose(float(style), expected_s, rtol=1e-4)


def test_vgg_losses_treat_target_features_as_constants():
    outputs, target, _ = make_outputs(batch=1, size=8)

    def total(candidate, target):
        p, s = losses.vgg_losses(
            RecordingFeatures(), (candidate,), target, (1.0,) * 5, "mse", image_size=8
        )
        return p + s

    grad_candidate, grad_target = jax.jit(jax.grad(total, argnums=(0, 1)))(
        jnp.asarray(outputs.reconstructed), jnp.asarray(target)
    )
    assert float(jnp.abs(grad_target).max()) == 0.0
    assert float(jnp.abs(grad_candidate).max()) > 0.0


# --------------------------------------------------------------------------------------------
# Total variation


def test_tv_squared_is_the_reference_formula():
    x = uniform(2, 5, 4, 3)
    nchw = x.transpose(0, 3, 1, 2).astype(np.float64)
    b, c, h, w = nchw.shape
    h_tv = ((nchw[:, :, 1:, :] - nchw[:, :, :-1, :]) ** 2).sum()
    w_tv = ((nchw[:, :, :, 1:] - nchw[:, :, :, :-1]) ** 2).sum()
    expected = 2 * (h_tv / (c * (h - 1) * w) + w_tv / (c * h * (w - 1))) / b
    np.testing.assert_allclose(float(losses.tv_loss(x, "squared")), expected, rtol=1e-5)


def test_tv_l1_is_paper_eq6():
    x = np.array([[0.0, 1.0], [3.0, 1.0]], np.float32).reshape(1, 2, 2, 1)
    # vertical |3-0|, |1-1| -> mean 1.5; horizontal |1-0|, |1-3| -> mean 1.5
    assert float(losses.tv_loss(x, "l1")) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="'l2'"):
        losses.tv_loss(x, "l2")


# --------------------------------------------------------------------------------------------
# Config


def test_default_config_has_the_papers_weights():
    c = losses.default_loss_config()
    assert (c.hole_weight, c.valid_weight) == (5.0, 1.0)
    assert (c.adversarial_weight, c.perceptual_weight, c.style_weight, c.tv_weight) == (
        0.001,
        0.05,
        80.0,
        0.1,
    )
    assert c.vgg_layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert (c.vgg_taps, c.style_mode, c.tv_mode) == ("reference", "mse", "squared")
    assert c.discriminator_scale == 0.5
    assert c.vgg_image_size == 224
    assert not c.l1_only and not c.feature_matching
    paper = losses.default_loss_config("paper")
    assert (paper.vgg_taps, paper.style_mode, paper.tv_mode) == ("paper", "l1", "l1")
    assert paper.discriminator_scale == 1.0 and paper.vgg_layer_weights == (1.0,) * 5
    assert paper.style_weight == 80.0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("style_mode", "gram", "style_mode"),
        ("tv_mode", "huber", "tv_mode"),
        ("vgg_taps", "mine", "tap set"),
        ("vgg_layer_weights", (1.0, 1.0), "vgg_layer_weights"),
        ("feature_matching", True, "feature_matching"),
        ("style_weight", -1.0, "style_weight"),
    ],
)
def test_bad_config_values_are_named(key, value, message):
    config = losses.default_loss_config()
    config[key] = value
    outputs, target, mask = make_outputs()
    with pytest.raises(ValueError, match=message):
        losses.generator_loss(outputs, target, mask, None, None, config)


def test_unknown_variant():
    with pytest.raises(ValueError, match="'ours'"):
        losses.default_loss_config("ours")


# --------------------------------------------------------------------------------------------
# Totals


def fake_logits(batch: int = 2):
    return [uniform(batch, 5, 5, 4, low=-2.0, high=2.0), uniform(batch, 3, 3, 4, low=-2.0)]


def test_generator_loss_terms_and_total():
    outputs, target, mask = make_outputs()
    logits = fake_logits()
    config = losses.default_loss_config()
    config.vgg_image_size = 32
    features = RecordingFeatures()
    total, terms = losses.generator_loss(outputs, target, mask, logits, features, config)
    assert set(terms) == {"coarse_l1", "output_l1", "adversarial", "perceptual", "style", "tv"}
    assert all(v.dtype == jnp.float32 for v in (total, *terms.values()))
    np.testing.assert_allclose(float(total), sum(float(v) for v in terms.values()), rtol=1e-6)
    np.testing.assert_allclose(
        float(terms["coarse_l1"]), np_hole_valid(outputs.coarse, target, mask), rtol=1e-6
    )
    expected_adv = 0.001 * -(logits[0].mean() + logits[1].mean())
    np.testing.assert_allclose(float(terms["adversarial"]), expected_adv, rtol=1e-5)
    perceptual, style = losses.vgg_losses(
        RecordingFeatures(),
        (outputs.reconstructed, outputs.completed),
        target,
        losses.REFERENCE_VGG_LAYER_WEIGHTS,
        "mse",
        32,
    )
    np.testing.assert_allclose(float(terms["perceptual"]), 0.05 * float(perceptual), rtol=1e-6)
    np.testing.assert_allclose(float(terms["style"]), 80 * float(style), rtol=1e-6)
    expected_tv = 0.1 * float(losses.tv_loss(outputs.completed, "squared"))
    np.testing.assert_allclose(float(terms["tv"]), expected_tv, rtol=1e-6)


def test_weight_zero_samples_count_for_nothing_in_every_term():
    """Padding (data.pipeline.BatchLayout): the losses of 2 samples plus 2 weight-0 samples of
    other content equal the losses of the 2 samples alone, term by term, discriminator too."""
    outputs, target, mask = make_outputs()
    padded_outputs, padded_target, padded_mask = make_outputs(batch=4)

    def pad(real, other):
        return jnp.concatenate([real, other[2:]]) if real is not None else None

    joined = Outputs(
        **{
            f.name: pad(getattr(outputs, f.name), getattr(padded_outputs, f.name))
            for f in dataclasses.fields(outputs)
        }
    )
    weight = jnp.asarray([1.0, 1.0, 0.0, 0.0])
    logits, other_logits = fake_logits(), fake_logits(4)
    joined_logits = [pad(a, b) for a, b in zip(logits, other_logits, strict=True)]
    config = losses.default_loss_config()
    config.vgg_image_size = 32
    _, alone = losses.generator_loss(outputs, target, mask, logits, RecordingFeatures(), config)
    joined_loss = functools.partial(
        losses.generator_loss,
        joined,
        pad(target, padded_target),
        pad(mask, padded_mask),
        joined_logits,
        RecordingFeatures(),
        config,
    )
    _, weighted = joined_loss(weight)
    _, unweighted = joined_loss()
    for name in alone:
        np.testing.assert_allclose(float(weighted[name]), float(alone[name]), rtol=1e-5)
    assert all(abs(float(unweighted[n]) / float(alone[n]) - 1) > 1e-3 for n in alone)
    d_alone = losses.discriminator_loss(logits, logits, config)[0]
    d_weighted = losses.discriminator_loss(joined_logits, joined_logits, config, weight)[0]
    np.testing.assert_allclose(float(d_weighted), float(d_alone), rtol=1e-6)


def test_l1_only_stage_needs_neither_discriminator_nor_vgg():
    outputs, target, mask = make_outputs()
    config = losses.default_loss_config()
    config.l1_only = True
    total, terms = losses.generator_loss(outputs, target, mask, None, None, config)
    assert set(terms) == {"coarse_l1", "output_l1"}
    expected = np_hole_valid(outputs.coarse, target, mask) + float(
        losses.output_l1_loss(outputs.reconstructed, outputs.lowres, target, mask)
    )
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)


def test_missing_vgg_or_logits_is_an_error():
    outputs, target, mask = make_outputs()
    config = losses.default_loss_config()
    with pytest.raises(ValueError, match="VGG"):
        losses.generator_loss(outputs, target, mask, fake_logits(), None, config)
    with pytest.raises(ValueError, match="fake_logits"):
        losses.generator_loss(outputs, target, mask, None, RecordingFeatures(), config)


def test_bfloat16_inputs_give_float32_losses():
    outputs, target, mask = make_outputs()
    as_bf16 = Outputs(*(jnp.asarray(a, jnp.bfloat16) for a in dataclasses.astuple(outputs)))
    config = losses.default_loss_config()
    config.tv_weight = 0.0
    config.perceptual_weight = config.style_weight = 0.0
    logits = [jnp.asarray(d, jnp.bfloat16) for d in fake_logits()]
    total, terms = losses.generator_loss(
        as_bf16, jnp.asarray(target, jnp.bfloat16), mask, logits, None, config
    )
    assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in terms.values())
    d_total, d_terms = losses.discriminator_loss(logits, logits, config)
    assert d_total.dtype == jnp.float32 and d_terms["real"].dtype == jnp.float32


def tiny_vgg_features(convention: str) -> vgg.VGGFeatures:
    """A random He-initialised VGG-19 of reduced widths (4..16 channels)."""
    widths = (4, 4, 8, 8, *(12,) * 4, *(16,) * 8)
    rng = np.random.default_rng(5)
    params, in_channels = {}, 3
    for name, width in zip(vgg.VGG19_CONV_NAMES, widths, strict=True):
        kernel = rng.normal(0, np.sqrt(2 / (9 * in_channels)), (3, 3, in_channels, width))
        params[name] = {"kernel": kernel, "bias": rng.normal(0, 0.01, width)}
        in_channels = width
    return vgg.vgg_features_from_params(params, {"convention": convention})


def test_jitted_generator_loss_gradient_is_finite():
    outputs, target, mask = make_outputs(batch=2, size=32)
    features = tiny_vgg_features("caffe")
    config = losses.default_loss_config()
    config.vgg_image_size = 64  # 224 works too, but costs a minute on a CI CPU
    logits = fake_logits()

    def loss_of_images(reconstructed, completed, features):
        candidate = Outputs(completed, reconstructed, outputs.coarse, outputs.lowres)
        return losses.generator_loss(candidate, target, mask, logits, features, config)[0]

    grad_fn = jax.jit(jax.grad(loss_of_images, argnums=(0, 1)))
    grads = grad_fn(jnp.asarray(outputs.reconstructed), jnp.asarray(outputs.completed), features)
    for g in grads:
        assert bool(jnp.all(jnp.isfinite(g)))
        assert float(jnp.abs(g).max()) > 0


def test_config_taps_are_applied_to_the_extractor():
    outputs, target, mask = make_outputs(batch=1, size=32)
    features = tiny_vgg_features("torchvision")
    config = losses.default_loss_config()
    config.vgg_image_size = 32
    logits = fake_logits(1)

    def terms(features, taps):
        config.vgg_taps = taps
        return jax.jit(lambda f: losses.generator_loss(outputs, target, mask, logits, f, config))(
            features
        )[1]

    reference, paper = terms(features, "reference"), terms(features, "paper")
    assert float(reference["perceptual"]) != pytest.approx(float(paper["perceptual"]), rel=1e-3)
    assert float(reference["coarse_l1"]) == float(paper["coarse_l1"])
