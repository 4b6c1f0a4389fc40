"""DeepGIN's training losses (spec 5.1-5.2; paper sec. 4.2, eqs. 1-7).

All functions are pure functions of arrays in NHWC: images [B, H, W, 3] in [0, 1] (the
generator's outputs are unclamped), masks [B, H, W, 1] with 1 = hole. Every loss is computed and
returned in float32, whatever the dtype of its inputs.

Where the paper's text and the reference code differ, the code is the default and the paper's
form is a mode of `default_loss_config` (see `default_loss_config("paper")`):

| term | reference (default) | paper |
|---|---|---|
| VGG taps | relu1_1..relu4_1, conv5_1 | conv1_1..conv5_1 (eq. 4) |
| VGG layer weights | 1/32, 1/16, 1/8, 1/4, 1 | all 1 (eqs. 4-5) |
| style | MSE of Gram/(CHW) | L1 of Gram/(CHW), / C^2 (eq. 5) |
| total variation | squared, (2/B)-scaled | L1 (eq. 6) |
| discriminator hinge | 0.5 * (real + fake) | real + fake (eq. 3) |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections

from deepgin_jax.models.layers import resize_bilinear_align_corners
from deepgin_jax.models.vgg import resolve_taps

Array = jax.Array
VGGFn = Callable[[Array], Sequence[Array]]

STYLE_MODES = ("mse", "l1")
TV_MODES = ("squared", "l1")
LOSS_VARIANTS = ("reference", "paper")
REFERENCE_VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
_NON_NEGATIVE_KEYS = (
    "hole_weight",
    "valid_weight",
    "coarse_l1_weight",
    "output_l1_weight",
    "adversarial_weight",
    "perceptual_weight",
    "style_weight",
    "tv_weight",
    "discriminator_scale",
)


class GeneratorOutputs(Protocol):
    """What the generator returns (spec 2.6); any object with these attributes will do."""

    completed: Array  # I_comp [B, H, W, 3]
    reconstructed: Array  # I_out [B, H, W, 3]
    coarse: Array  # I_coarse [B, H, W, 3]
    lowres: Array | None  # I_lr [B, H/4, W/4, 3], None without back projection


def _f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------------------------
# Configuration


def default_loss_config(variant: str = "reference") -> ml_collections.ConfigDict:
    """Every loss weight and mode, with the reference code's defaults (spec 5.1-5.2).

    variant: "reference" (the code, the default) or "paper" (the formulas as the paper writes
    them: conv taps, unweighted VGG layers, L1 style, L1 TV, no 0.5 on the hinge D loss). The
    weights lambda are the paper's (sec. 5.1) in both: hole 5, adversarial 0.001, perceptual
    0.05, style 80, TV 0.1.
    """
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"unknown loss variant {variant!r}; expected one of {LOSS_VARIANTS}")
    paper = variant == "paper"
    config = ml_collections.ConfigDict()
    # Warm-up stage (paper sec. 5.1): True keeps only the two L1 terms, no discriminator.
    config.l1_only = False
    # Eq. 1: lambda_hole * L_hole + L_valid, for I_coarse, I_out and I_lr.
    config.hole_weight = 5.0
    config.valid_weight = 1.0
    config.coarse_l1_weight = 1.0
    config.output_l1_weight = 1.0
    # Eq. 7.
    config.adversarial_weight = 0.001
    config.perceptual_weight = 0.05
    config.style_weight = 80.0
    config.tv_weight = 0.1
    # VGG-19 features (spec 5.1; eqs. 4-5).
    config.vgg_taps = "paper" if paper else "reference"
    config.vgg_layer_weights = (1.0,) * 5 if paper else REFERENCE_VGG_LAYER_WEIGHTS
    config.vgg_image_size = 224
    config.style_mode = "l1" if paper else "mse"
    config.tv_mode = "l1" if paper else "squared"
    # Spec 5.2 halves the hinge discriminator loss; eq. 3 does not.
    config.discriminator_scale = 1.0 if paper else 0.5
    # The reference's pix2pixHD feature matching is off by default (spec 5.1); not implemented.
    config.feature_matching = False
    return config


def validate_loss_config(config: Any) -> None:
    """Raises ValueError naming the first bad mode or value in a loss config."""
    if config.style_mode not in STYLE_MODES:
        raise ValueError(f"unknown style_mode {config.style_mode!r}; expected one of {STYLE_MODES}")
    if config.tv_mode not in TV_MODES:
        raise ValueError(f"unknown tv_mode {config.tv_mode!r}; expected one of {TV_MODES}")
    if config.feature_matching:
        raise ValueError("feature_matching=True is not implemented (the reference keeps it off)")
    n_taps = len(resolve_taps(config.vgg_taps))
    if len(config.vgg_layer_weights) != n_taps:
        raise ValueError(
            f"vgg_layer_weights has {len(config.vgg_layer_weights)} entries for {n_taps} VGG taps"
        )
    if int(config.vgg_image_size) < 32:
        raise ValueError(f"vgg_image_size must be at least 32, got {config.vgg_image_size}")
    for name in _NON_NEGATIVE_KEYS:
        if float(getattr(config, name)) < 0:
            raise ValueError(f"loss weight {name} must be >= 0, got {getattr(config, name)}")


# --------------------------------------------------------------------------------------------
# L1 terms (eq. 1, spec 5.1)


def batch_mean(values: Array, sample_weight: Array | None = None) -> Array:
    """The mean over all elements of `values` [B, ...]; with `sample_weight` [B], the weighted
    mean of the per-sample means (weight-0 samples, the padding of `data.pipeline.BatchLayout`,
    count for nothing): the mean over the weighted samples alone."""
    if sample_weight is None:
        return jnp.mean(values)
    per_sample = jnp.mean(values.reshape(values.shape[0], -1), axis=1)
    weight = _f32(sample_weight)
    return jnp.sum(weight * per_sample) / jnp.sum(weight)


def l1(prediction: Array, target: Array, sample_weight: Array | None = None) -> Array:
    """PyTorch's `L1Loss`: mean |prediction - target| over all elements, float32 (over the
    weighted samples, with `sample_weight`)."""
    return batch_mean(jnp.abs(_f32(prediction) - _f32(target)), sample_weight)


def hole_valid_l1(
    prediction: Array,
    target: Array,
    mask: Array,
    hole_weight: float = 5.0,
    valid_weight: float = 1.0,
    sample_weight: Array | None = None,
) -> Array:
    """Eq. 1 as the code computes it (spec 5.1): w_h L1(M*P, M*T) + w_v L1((1-M)*P, (1-M)*T).

    prediction, target: [B, H, W, 3]; mask: [B, H, W, 1], 1 = hole, may be fractional. Each
    L1 is a mean over all B*H*W*3 elements, not renormalised by the hole area.
    """
    prediction, target, mask = _f32(prediction), _f32(target), _f32(mask)
    hole = l1(mask * prediction, mask * target, sample_weight)
    valid = l1((1.0 - mask) * prediction, (1.0 - mask) * target, sample_weight)
    return hole_weight * hole + valid_weight * valid


def coarse_l1_loss(
    coarse: Array,
    target: Array,
    mask: Array,
    hole_weight: float = 5.0,
    valid_weight: float = 1.0,
    sample_weight: Array | None = None,
) -> Array:
    """Spec 5.1 `G_COARSE_L1`: `hole_valid_l1` of the raw coarse output I_coarse."""
    return hole_valid_l1(coarse, target, mask, hole_weight, valid_weight, sample_weight)


def output_l1_loss(
    reconstructed: Array,
    lowres: Array | None,
    target: Array,
    mask: Array,
    hole_weight: float = 5.0,
    valid_weight: float = 1.0,
    sample_weight: Array | None = None,
) -> Array:
    """Spec 5.1 `G_OUT_L1`: `hole_valid_l1` of I_out (not the composite) plus that of I_lr.

    For I_lr [B, h, w, 3], the target and the mask are downsampled to h x w with align-corners
    bilinear sampling, so the low-resolution mask is fractional at hole borders. lowres=None
    (a generator without back projection) drops the low-resolution terms.
    """
    loss = hole_valid_l1(reconstructed, target, mask, hole_weight, valid_weight, sample_weight)
    if lowres is not None:
        size = lowres.shape[1:3]
        target_lr = resize_bilinear_align_corners(_f32(target), size)
        mask_lr = resize_bilinear_align_corners(_f32(mask), size)
        loss = loss + hole_valid_l1(
            lowres, target_lr, mask_lr, hole_weight, valid_weight, sample_weight
        )
    return loss


# --------------------------------------------------------------------------------------------
# Hinge adversarial terms (eqs. 2-3, spec 5.1-5.2)


def hinge_generator_loss(fake_logits: Sequence[Array], sample_weight: Array | None = None) -> Array:
    """Eq. 2: sum over discriminator scales of -mean D_s(I_in, I_comp).

    fake_logits: one [B, h, w, C] array per scale (the mean runs over all its elements).
    """
    return sum(-batch_mean(_f32(logits), sample_weight) for logits in fake_logits)


def hinge_discriminator_terms(
    real_logits: Sequence[Array],
    fake_logits: Sequence[Array],
    sample_weight: Array | None = None,
) -> tuple[Array, Array]:
    """Eq. 3 split in two: (sum_s mean ReLU(1 - D_s(real)), sum_s mean ReLU(1 + D_s(fake)))."""
    if len(real_logits) != len(fake_logits):
        raise ValueError(f"{len(real_logits)} real vs {len(fake_logits)} fake logit scales")
    real = sum(batch_mean(jax.nn.relu(1.0 - _f32(d)), sample_weight) for d in real_logits)
    fake = sum(batch_mean(jax.nn.relu(1.0 + _f32(d)), sample_weight) for d in fake_logits)
    return real, fake


# --------------------------------------------------------------------------------------------
# Perceptual and style terms on VGG-19 features (eqs. 4-5, spec 5.1)


def gram_matrix(features: Array) -> Array:
    """Per-sample Gram matrix F F^T / (C H W) of features [B, H, W, C] -> [B, C, C], float32."""
    features = _f32(features)
    _, h, w, c = features.shape
    gram = jnp.einsum("bhwc,bhwd->bcd", features, features, precision=jax.lax.Precision.HIGHEST)
    return gram / (c * h * w)


def _check_layer_weights(n_features: int, layer_weights: Sequence[float]) -> None:
    if len(layer_weights) != n_features:
        raise ValueError(f"{len(layer_weights)} VGG layer weights for {n_features} feature maps")


def perceptual_distance(
    features: Sequence[Array],
    target_features: Sequence[Array],
    layer_weights: Sequence[float],
    sample_weight: Array | None = None,
) -> Array:
    """Eq. 4 / spec 5.1: sum_l w_l mean |phi_l(x) - phi_l(y)|."""
    _check_layer_weights(len(features), layer_weights)
    return sum(
        w * l1(f, t, sample_weight)
        for w, f, t in zip(layer_weights, features, target_features, strict=True)
    )


def style_distance(
    features: Sequence[Array],
    target_features: Sequence[Array],
    layer_weights: Sequence[float],
    mode: str = "mse",
    sample_weight: Array | None = None,
) -> Array:
    """Style term over Gram matrices G = F F^T / (C H W) (spec 5.1; eq. 5).

    mode "mse" (reference): sum_l w_l mean (G_l(x) - G_l(y))^2 over B*C*C;
    mode "l1" (paper eq. 5): sum_l w_l mean |G_l(x) - G_l(y)|, i.e. ||.||_1 / C^2 per sample.
    """
    if mode not in STYLE_MODES:
        raise ValueError(f"unknown style mode {mode!r}; expected one of {STYLE_MODES}")
    _check_layer_weights(len(features), layer_weights)
    total = jnp.float32(0.0)
    for w, f, t in zip(layer_weights, features, target_features, strict=True):
        diff = gram_matrix(f) - gram_matrix(t)
        distance = diff**2 if mode == "mse" else jnp.abs(diff)
        total = total + w * batch_mean(distance, sample_weight)
    return total


def target_vgg_features(
    vgg: VGGFn, target: Array, size: tuple[int, int], group: int = 1
) -> tuple[Array, ...]:
    """The VGG features of `target` [B, H, W, 3] resized to `size`, under stop_gradient.

    With `group` > 1 dividing B, the batch is checked at run time: when every run of `group`
    consecutive samples holds one image (a photo with its masks), the VGG runs on one sample
    per run and its features are repeated; otherwise on every sample. Both give the same
    features, so a batch of any other layout (padding, tests) stays correct.
    """

    def every_sample(images: Array) -> tuple[Array, ...]:
        return tuple(vgg(resize_bilinear_align_corners(images, size)))

    def one_per_group(images: Array) -> tuple[Array, ...]:
        features = every_sample(images[::group])
        return tuple(jnp.repeat(f, group, axis=0) for f in features)

    batch = target.shape[0]
    if group <= 1 or batch % group:
        return jax.lax.stop_gradient(every_sample(target))
    runs = target.reshape(batch // group, group, *target.shape[1:])
    shared = jnp.all(runs == runs[:, :1])
    features = jax.lax.cond(shared, one_per_group, every_sample, target)
    return jax.lax.stop_gradient(features)


def vgg_losses(
    vgg: VGGFn,
    candidates: Sequence[Array],
    target: Array,
    layer_weights: Sequence[float] = REFERENCE_VGG_LAYER_WEIGHTS,
    style_mode: str = "mse",
    image_size: int = 224,
    sample_weight: Array | None = None,
    target_group: int = 1,
) -> tuple[Array, Array]:
    """(perceptual, style), each summed over the candidates (spec 5.1: I_out and I_comp vs GT).

    Every image is first resized to image_size^2 (align-corners bilinear). The target goes
    through the VGG once, under stop_gradient; the candidates go through it together in one
    batched call. vgg maps images [N, S, S, 3] in [0, 1] to a sequence of feature maps.

    target_group: the number of consecutive samples that may share one target (a training
    batch's masks per photo, `data.pipeline`); see `target_vgg_features`.
    """
    size = (image_size, image_size)
    batch = target.shape[0]
    target_features = target_vgg_features(vgg, _f32(target), size, target_group)
    stacked = jnp.concatenate(
        [resize_bilinear_align_corners(_f32(c), size) for c in candidates], axis=0
    )
    stacked_features = tuple(vgg(stacked))
    perceptual = jnp.float32(0.0)
    style = jnp.float32(0.0)
    for i in range(len(candidates)):
        features = [f[i * batch : (i + 1) * batch] for f in stacked_features]
        perceptual = perceptual + perceptual_distance(
            features, target_features, layer_weights, sample_weight
        )
        style = style + style_distance(
            features, target_features, layer_weights, style_mode, sample_weight
        )
    return perceptual, style


# --------------------------------------------------------------------------------------------
# Total variation (eq. 6, spec 5.1)


def tv_loss(images: Array, mode: str = "squared", sample_weight: Array | None = None) -> Array:
    """Total variation of images [B, H, W, C].

    mode "squared" (reference, spec 5.1):
        (2 / B) [sum (dy)^2 / (C (H-1) W) + sum (dx)^2 / (C H (W-1))]
        = 2 [mean (dy)^2 + mean (dx)^2];
    mode "l1" (paper eq. 6): mean |dy| + mean |dx|, each over its own number of differences.
    """
    images = _f32(images)
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    if mode == "squared":
        return 2.0 * (batch_mean(dy**2, sample_weight) + batch_mean(dx**2, sample_weight))
    if mode == "l1":
        return batch_mean(jnp.abs(dy), sample_weight) + batch_mean(jnp.abs(dx), sample_weight)
    raise ValueError(f"unknown TV mode {mode!r}; expected one of {TV_MODES}")


# --------------------------------------------------------------------------------------------
# Totals (eq. 7, spec 5.1-5.2)


def generator_loss(
    outputs: GeneratorOutputs,
    target: Array,
    mask: Array,
    fake_logits: Sequence[Array] | None,
    vgg: VGGFn | None,
    loss_config: Any,
    sample_weight: Array | None = None,
    target_group: int = 1,
) -> tuple[Array, dict[str, Array]]:
    """Eq. 7 / spec 5.1: the generator's total loss and its weighted terms (all float32).

    outputs: `completed`, `reconstructed`, `coarse` [B, H, W, 3] and `lowres` [B, H/4, W/4, 3]
    (or None). target: ground truth [B, H, W, 3]. mask: [B, H, W, 1], 1 = hole.
    fake_logits: the discriminator's outputs on I_comp, one [B, h, w, C] array per scale (may be
    None when l1_only or adversarial_weight is 0). vgg: images in [0, 1] -> feature maps, e.g.
    `models.vgg.load_vgg19(...)` (may be None when l1_only or both VGG weights are 0).

    sample_weight: [B] or None; every term is then a mean over the weighted samples
    (`batch_mean`). target_group: consecutive samples that may share a target (`vgg_losses`).

    Returns (total, terms) with terms among "coarse_l1", "output_l1", "adversarial",
    "perceptual", "style", "tv"; in the l1_only (warm-up) stage only the first two.
    """
    validate_loss_config(loss_config)
    c = loss_config
    terms: dict[str, Array] = {
        "coarse_l1": c.coarse_l1_weight
        * coarse_l1_loss(
            outputs.coarse, target, mask, c.hole_weight, c.valid_weight, sample_weight
        ),
        "output_l1": c.output_l1_weight
        * output_l1_loss(
            outputs.reconstructed,
            outputs.lowres,
            target,
            mask,
            c.hole_weight,
            c.valid_weight,
            sample_weight,
        ),
    }
    if not c.l1_only:
        if c.adversarial_weight:
            if fake_logits is None:
                raise ValueError("fake_logits are needed when adversarial_weight > 0")
            terms["adversarial"] = c.adversarial_weight * hinge_generator_loss(
                fake_logits, sample_weight
            )
        if c.perceptual_weight or c.style_weight:
            if vgg is None:
                raise ValueError("a VGG-19 feature extractor is needed for perceptual/style")
            if hasattr(vgg, "with_taps"):  # a VGGFeatures: the config picks the taps
                vgg = vgg.with_taps(c.vgg_taps)
            perceptual, style = vgg_losses(
                vgg,
                (outputs.reconstructed, outputs.completed),
                target,
                tuple(c.vgg_layer_weights),
                c.style_mode,
                int(c.vgg_image_size),
                sample_weight,
                target_group,
            )
            terms["perceptual"] = c.perceptual_weight * perceptual
            terms["style"] = c.style_weight * style
        if c.tv_weight:
            terms["tv"] = c.tv_weight * tv_loss(outputs.completed, c.tv_mode, sample_weight)
    terms = {name: _f32(value) for name, value in terms.items()}
    return sum(terms.values()), terms


def discriminator_loss(
    real_logits: Sequence[Array],
    fake_logits: Sequence[Array],
    loss_config: Any,
    sample_weight: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Spec 5.2 / eq. 3: scale * sum_s [mean ReLU(1 - D_s(GT)) + mean ReLU(1 + D_s(I_comp))].

    scale = loss_config.discriminator_scale (0.5 in the reference, 1 in eq. 3). The fake
    logits should come from the detached I_comp. Returns (total, {"real", "fake"}), the terms
    unscaled.
    """
    validate_loss_config(loss_config)
    real, fake = hinge_discriminator_terms(real_logits, fake_logits, sample_weight)
    total = loss_config.discriminator_scale * (real + fake)
    return _f32(total), {"real": _f32(real), "fake": _f32(fake)}
