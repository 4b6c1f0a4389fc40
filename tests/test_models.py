"""The DeepGIN networks: sizes, parameter counts, composites, blocks against torch, init."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepgin_jax.models import DeepGIN, MultiScaleDiscriminator
from deepgin_jax.models.generator import ResidualBlock, SelfAttention, back_project
from tests import torch_reference
from tests.conftest import masked_inputs


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_inputs(n: int, h: int, w: int):
    return (
        jax.ShapeDtypeStruct((n, h, w, 3), jnp.float32),
        jax.ShapeDtypeStruct((n, h, w, 1), jnp.float32),
    )


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, 42_930_186),  # SPDResBlk-MSSA-BP, the full model
        ({"back_projection": False}, 42_892_134),  # SPDResBlk-MSSA
        ({"back_projection": False, "block_type": "dilated"}, 42_892_134),
        ({"back_projection": False, "attention": "single"}, 41_375_558),  # StdResBlk-SA
        ({"back_projection": False, "attention": "none"}, 40_849_990),  # StdResBlk
        ({"coarse_only": True}, 8_167_843),  # coarse only
    ],
)
def test_generator_parameter_counts_match_paper_table_1(fields, expected):
    variables = jax.eval_shape(
        DeepGIN(**fields).init, jax.random.key(0), *abstract_inputs(1, 256, 256)
    )
    assert count(variables["params"]) == expected


def test_full_generator_stages_and_output_shapes():
    model = DeepGIN()
    variables = jax.eval_shape(model.init, jax.random.key(0), *abstract_inputs(1, 256, 256))
    params = variables["params"]
    assert set(params) == {"coarse", "refine"}
    assert count(params["coarse"]) == 8_167_843
    assert count(params["refine"]) == 34_762_343
    out = jax.eval_shape(model.apply, variables, *abstract_inputs(2, 256, 256))
    assert out.completed.shape == out.reconstructed.shape == out.coarse.shape == (2, 256, 256, 3)
    assert out.lowres.shape == (2, 64, 64, 3)


def test_discriminator_counts_and_output_shapes():
    model = MultiScaleDiscriminator()
    image = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), image, image)
    assert count(variables["params"]) == 3_421_568
    outputs, _ = jax.eval_shape(
        lambda v, a, b: model.apply(v, a, b, mutable=["spectral"]), variables, image, image
    )
    assert [o.shape for o in outputs] == [(1, 67, 67, 256), (1, 35, 35, 256)]


def test_small_forward_keeps_known_pixels_exactly(tiny_generator):
    model, variables = tiny_generator
    masked, mask = masked_inputs(2, 64, 64)
    out = jax.jit(model.apply)(variables, masked, mask)
    assert out.completed.shape == (2, 64, 64, 3) and out.lowres.shape == (2, 16, 16, 3)
    for field in ("completed", "reconstructed", "coarse", "lowres"):
        assert np.isfinite(np.asarray(getattr(out, field))).all()
    known = np.asarray(mask[..., 0]) == 0
    np.testing.assert_array_equal(np.asarray(out.completed)[known], np.asarray(masked)[known])
    hole = ~known
    assert not np.allclose(np.asarray(out.completed)[hole], 1.0)


@pytest.mark.parametrize("size", [(40, 56)])
def test_any_multiple_of_8_works(tiny_generator, size):
    model, variables = tiny_generator
    masked, mask = masked_inputs(1, *size)
    out = jax.jit(model.apply)(variables, masked, mask)
    assert out.completed.shape == (1, *size, 3)
    assert out.lowres.shape == (1, size[0] // 4, size[1] // 4, 3)
    assert np.isfinite(np.asarray(out.completed)).all()


def test_cropped_padding_gives_the_reference_layouts_values(tiny_generator):
    """crop_padding (pad one more, crop it in the conv) is an execution detail: the same
    parameters and, up to float32 rounding, the same outputs as pad-then-VALID."""
    model, variables = tiny_generator
    params = randomize(variables)
    masked, mask = masked_inputs(1, 40, 56)
    cropped = jax.jit(model.clone(crop_padding=True).apply)(params, masked, mask)
    valid = jax.jit(model.clone(crop_padding=False).apply)(params, masked, mask)
    for field in ("completed", "reconstructed", "coarse", "lowres"):
        a, b = np.asarray(getattr(cropped, field)), np.asarray(getattr(valid, field))
        assert a.std() > 0.01, field
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=field)


def test_rejects_sizes_and_masks_that_do_not_fit(tiny_generator):
    model, variables = tiny_generator
    masked, mask = masked_inputs(1, 60, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.apply(variables, masked, mask)
    masked, mask = masked_inputs(1, 64, 64)
    with pytest.raises(ValueError, match="mask must have shape"):
        model.apply(variables, masked, mask[:, :32])
    with pytest.raises(ValueError, match="block_type"):
        DeepGIN(base_features=16, block_type="dense").init(jax.random.key(0), masked, mask)


@pytest.mark.parametrize(
    "fields",
    [
        {"coarse_only": True},
        {"back_projection": False},
        {"attention": "none"},
        {"block_type": "standard", "attention": "single"},
    ],
)
def test_ablation_outputs(fields):
    model = DeepGIN(base_features=16, **fields)
    inputs = abstract_inputs(1, 64, 64)
    variables = jax.eval_shape(model.init, jax.random.key(1), *inputs)
    out = jax.eval_shape(model.apply, variables, *inputs)
    assert out.completed.shape == out.reconstructed.shape == (1, 64, 64, 3)
    assert (out.lowres is None) == (fields.get("coarse_only", False) or "back_projection" in fields)


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def torch_weights(params: dict, prefix: str) -> dict[str, torch.Tensor]:
    """Flax conv params {name: {kernel, bias}} -> a torch-style state dict under `prefix`."""
    sd = {}
    for name, p in params.items():
        key = {"fusion": "fusion.conv", "out": "W"}.get(name, name)
        if name.startswith("branch"):
            key = f"{name}.conv"
        sd[f"{prefix}.{key}.weight"] = torch.from_numpy(
            np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()
        )
        sd[f"{prefix}.{key}.bias"] = torch.from_numpy(np.asarray(p["bias"]).copy())
    return sd


def randomize(variables, seed: int = 0):
    """Order-one weights, so that the comparison can fail (the 0.1 init makes outputs tiny)."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = []
    for key, leaf in zip(keys, leaves, strict=True):
        fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim == 4 else 10
        new.append(jax.random.normal(key, leaf.shape) / np.sqrt(fan_in))
    return jax.tree.unflatten(treedef, new)


@pytest.mark.parametrize("rates", [(2, 3, 4, 5, 6, 8, 10, 1), (2, 3, 4, 5)])
def test_spd_block_matches_torch_functional(rates):
    block = ResidualBlock(32, rates)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 32)).astype(np.float32)
    variables = randomize(jax.jit(block.init)(jax.random.key(0), x))
    ours = np.asarray(jax.jit(block.apply)(variables, x))
    sd = torch_weights(variables["params"], "blk")
    sd = {k.replace("fusion.conv", "fusion5.conv"): v for k, v in sd.items()}
    theirs = torch_reference.spd_block(sd, "blk", to_torch(x), rates, "fusion5").numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=1e-5)


def test_self_attention_matches_torch_functional():
    block = SelfAttention(16)
    x = np.random.default_rng(1).standard_normal((2, 8, 12, 16)).astype(np.float32)
    variables = randomize(jax.jit(block.init)(jax.random.key(0), x), seed=3)
    ours = np.asarray(jax.jit(block.apply)(variables, x))
    theirs = torch_reference.self_attention(
        torch_weights(variables["params"], "sa"), "sa", to_torch(x)
    )
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-5)
    # Not an identity: the output projection is not zero-initialised (spec 2.5).
    fresh = jax.jit(block.init)(jax.random.key(0), x)
    assert np.abs(np.asarray(block.apply(fresh, x)) - x).max() > 1e-6


def test_back_projection_matches_torch_functional():
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    alpha = rng.random((2, 32, 32, 1), dtype=np.float32)
    lowres = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    known = rng.random((2, 32, 32, 3), dtype=np.float32)
    mask = (rng.random((2, 32, 32, 1)) > 0.5).astype(np.float32)
    ours = np.asarray(back_project(raw, alpha, lowres, known, mask))
    theirs = torch_reference.back_projection(
        *(to_torch(a) for a in (raw, alpha, lowres, known, mask))
    ).numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=1e-5)


def test_initialisers_follow_the_reference():
    block = ResidualBlock(256, (2, 3, 4, 5))
    params = jax.jit(block.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 256)))["params"]
    kernel = np.asarray(params["fusion"]["kernel"])  # fan_in = 9 * 256
    np.testing.assert_allclose(kernel.std(), 0.1 * np.sqrt(2 / (9 * 256)), rtol=0.02)
    assert np.all(np.asarray(params["fusion"]["bias"]) == 0)

    # DeepGIN(init_scale=s) reaches every convolution: plain Kaiming with s = 1.
    masked, mask = masked_inputs(1, 16, 16)
    for scale in (0.1, 1.0):
        params = jax.jit(DeepGIN(base_features=16, init_scale=scale).init)(
            jax.random.key(0), masked, mask
        )["params"]
        kernel = np.asarray(params["refine"]["bottleneck1"]["fusion"]["kernel"])  # fan_in 9*128
        np.testing.assert_allclose(kernel.std(), scale * np.sqrt(2 / (9 * 128)), rtol=0.03)

    model = MultiScaleDiscriminator()
    image = jnp.zeros((1, 32, 32, 3))
    params = jax.jit(model.init)(jax.random.key(0), image, image)["params"]["scale0"]["conv3"]
    fan_in = 16 * 256
    np.testing.assert_allclose(
        np.asarray(params["kernel"]).std(), 1 / np.sqrt(3 * fan_in), rtol=0.02
    )
    assert np.abs(np.asarray(params["bias"])).max() <= 1 / np.sqrt(fan_in)


def test_discriminator_matches_torch_with_one_power_iteration_per_call():
    model = MultiScaleDiscriminator(features=8, num_scales=2)
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((2, 32, 32, 3), dtype=np.float32)) for _ in range(2))
    variables = jax.jit(model.init)(jax.random.key(0), a, b)
    outputs, updated = model.apply(variables, a, b, update_stats=True, mutable=["spectral"])

    x = to_torch(np.concatenate([a, b], -1))
    for scale, out in enumerate(outputs):
        if scale:
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        y = x
        for i, stride in enumerate((2, 2, 1, 1)):
            conv = variables["params"][f"scale{scale}"][f"conv{i}"]
            kernel = np.asarray(conv["kernel"])
            u = np.asarray(variables["spectral"][f"scale{scale}"][f"conv{i}"]["u"])
            matrix = kernel.reshape(-1, kernel.shape[-1])  # [kh*kw*in, out]
            v = matrix @ u / np.linalg.norm(matrix @ u)
            u = v @ matrix / np.linalg.norm(v @ matrix)
            sigma = v @ matrix @ u
            new_u = updated["spectral"][f"scale{scale}"][f"conv{i}"]["u"]
            np.testing.assert_allclose(np.asarray(new_u), u, rtol=1e-5, atol=1e-6)
            weight = torch.from_numpy((kernel / sigma).transpose(3, 2, 0, 1).copy())
            bias = torch.from_numpy(np.asarray(conv["bias"]).copy())
            y = F.conv2d(y, weight, bias, stride=stride, padding=2)
            if i < 3:
                y = F.leaky_relu(y, 0.2)
        np.testing.assert_allclose(np.asarray(out), y.numpy().transpose(0, 2, 3, 1), atol=1e-5)

    # A second call starts from the advanced u: the state moves on every call.
    _, again = model.apply(
        {"params": variables["params"], **updated}, a, b, update_stats=True, mutable=["spectral"]
    )
    first = updated["spectral"]["scale0"]["conv0"]["u"]
    second = again["spectral"]["scale0"]["conv0"]["u"]
    assert not np.allclose(np.asarray(first), np.asarray(second))


def test_bfloat16_activations_stay_close_to_float32(tiny_generator):
    """compute_dtype=bfloat16: parameters stay float32, outputs are float32 and within a few
    percent of the float32 model's (order-one weights; the README gives the full model's
    figures)."""
    model, variables = tiny_generator
    params = randomize(variables)
    masked, mask = masked_inputs(2, 64, 64)
    reference = jax.jit(model.apply)(params, masked, mask)
    bf16 = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(params, masked, mask)
    for field in ("completed", "reconstructed", "coarse", "lowres"):
        a, b = np.asarray(getattr(reference, field)), np.asarray(getattr(bf16, field))
        assert b.dtype == np.float32, field
        difference = np.abs(a - b) / a.std()
        assert difference.max() < 0.08, field
        assert difference.mean() < 0.015, field
        assert difference.max() > 0, field  # the bf16 path really ran in bf16


def test_rematerialised_blocks_give_the_same_values_and_gradients(tiny_generator):
    """model.remat recomputes the residual blocks in the backward pass: same parameter tree,
    same loss, same gradients."""
    model, variables = tiny_generator
    params = randomize(variables)
    masked, mask = masked_inputs(1, 32, 32)

    def loss(model, p):
        out = model.apply(p, masked, mask)
        return jnp.mean(out.reconstructed**2) + jnp.mean(out.coarse**2)

    plain = jax.jit(jax.value_and_grad(functools.partial(loss, model)))(params)
    remat = jax.jit(jax.value_and_grad(functools.partial(loss, model.clone(remat=True))))(params)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(plain[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
