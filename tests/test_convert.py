"""The PyTorch-weights converter: every tensor to the right place, in the right layout."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from deepgin_jax import checkpointing, convert
from deepgin_jax.models import MultiScaleDiscriminator
from tests import torch_reference
from tests.conftest import masked_inputs


def test_full_size_state_dict_maps_every_tensor_with_its_layout():
    shapes = torch_reference.generator_state_dict_shapes(64)
    assert len(shapes) == 242
    assert sum(int(np.prod(s)) for s in shapes.values()) == 42_930_186
    # Distinct asymmetric values (offset aranges): a wrong key or transpose shows.
    state_dict, offset = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape))
        state_dict[key] = np.arange(offset, offset + size, dtype=np.float32).reshape(shape)
        offset += size
    params, model_config = convert.convert_generator(state_dict)
    assert model_config == {"base_features": 64}

    def at(path: str) -> np.ndarray:
        node = params
        for part in path.split("/"):
            node = node[part]
        return np.asarray(node)

    expectations = {
        "lr_coarse_tinker.1": "coarse/enc_conv1",
        "lr_coarse_tinker.12.branch8.conv": "coarse/block1/branch8",  # the dilation-1 branch
        "lr_coarse_tinker.17.fusion9.conv": "coarse/block6/fusion",
        "lr_coarse_tinker.31": "coarse/out_conv",
        "r_md_mres5.branch2.conv": "refine/bottleneck3/branch2",  # third in execution order
        "r_md_mres3.fusion5.conv": "refine/bottleneck4/fusion",
        "r_md_satn1.W": "refine/attention_1_16/out",
        "r_de_satn3.theta": "refine/attention_1_4/theta",
        "r_en_skp_conv4": "refine/skip_conv_1_8",
        "r_de_mix_conv1": "refine/mix_conv_1_8",
        "r_de_conv5_lr_alpha": "refine/alpha_conv",
        "r_de_conv3_lr": "refine/lowres_out",
    }
    for torch_name, flax_path in expectations.items():
        weight = state_dict[f"{torch_name}.weight"]
        np.testing.assert_array_equal(at(f"{flax_path}/kernel"), weight.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(at(f"{flax_path}/bias"), state_dict[f"{torch_name}.bias"])
    assert sum(x.size for x in jax.tree.leaves(params)) == 42_930_186


@pytest.fixture(scope="module")
def small_state_dict_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("torch") / "latest_net_G.pth"
    torch.save(torch_reference.random_state_dict(ngf=16, seed=0), path)
    return path


def test_converted_small_generator_matches_torch_functional(small_state_dict_file):
    state_dict = convert.load_torch_state_dict(small_state_dict_file)
    params, model_config = convert.convert_generator(state_dict)
    masked, mask = masked_inputs(2, 64, 64, seed=3)
    from deepgin_jax.models import DeepGIN

    ours = jax.jit(DeepGIN(**model_config).apply)({"params": params}, masked, mask)
    torch_sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    with torch.no_grad():
        theirs = torch_reference.generator(
            torch_sd,
            torch.from_numpy(np.asarray(masked).transpose(0, 3, 1, 2).copy()),
            torch.from_numpy(np.asarray(mask).transpose(0, 3, 1, 2).copy()),
        )
    for name, expected in zip(
        ("completed", "reconstructed", "coarse", "lowres"), theirs, strict=True
    ):
        expected = expected.numpy().transpose(0, 2, 3, 1)
        assert np.abs(expected).mean() > 0.02, f"{name}: activations too small to prove anything"
        np.testing.assert_allclose(
            np.asarray(getattr(ours, name)), expected, atol=2e-5, err_msg=name
        )


def test_mismatched_state_dicts_are_errors_naming_the_key():
    base = {
        k: np.zeros(s, np.float32)
        for k, s in torch_reference.generator_state_dict_shapes(16).items()
    }
    missing = dict(base)
    del missing["r_de_conv4.bias"]
    with pytest.raises(convert.ConversionError, match=r"missing \(1\): refine/dec_conv_1_1/bias"):
        convert.convert_generator(missing)
    extra = {**base, "r_de_conv9.weight": np.zeros((3, 3, 1, 1), np.float32)}
    with pytest.raises(convert.ConversionError, match=r"r_de_conv9\.weight"):
        convert.convert_generator(extra)
    wrong = {**base, "r_en_conv3.bias": np.zeros(7, np.float32)}
    with pytest.raises(
        convert.ConversionError, match=r"refine/enc_conv3/bias: expected \(32,\), got \(7,\)"
    ):
        convert.convert_generator(wrong)
    with pytest.raises(convert.ConversionError, match=r"lr_coarse_tinker\.1\.weight"):
        convert.convert_generator({"something.weight": np.zeros((1,))})


def test_unreadable_or_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="state dict not found"):
        convert.load_torch_state_dict(tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(convert.ConversionError, match="could not be read"):
        convert.load_torch_state_dict(bad)


def test_cli_writes_a_checkpoint_that_load_generator_reads(small_state_dict_file, tmp_path):
    out = tmp_path / "gin"
    convert.run_command("torch-generator", str(small_state_dict_file), str(out))
    model, variables = checkpointing.load_generator(out)
    assert model.base_features == 16
    expected, _ = convert.convert_generator(convert.load_torch_state_dict(small_state_dict_file))
    got = jax.tree.leaves(variables["params"])
    assert all(np.array_equal(a, b) for a, b in zip(got, jax.tree.leaves(expected), strict=True))
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert.run_command("torch-generator", str(small_state_dict_file), str(out))
    with pytest.raises(checkpointing.CheckpointNotFoundError, match="no checkpoint found"):
        checkpointing.load_generator(tmp_path)


def reference_discriminator_state_dict(ndf: int, seed: int) -> dict[str, np.ndarray]:
    """Keys and shapes of the reference MultiscaleDiscriminator (spec 8.3), random values."""
    rng = np.random.default_rng(seed)
    sd = {}
    widths = [(6, ndf), (ndf, 2 * ndf), (2 * ndf, 4 * ndf), (4 * ndf, 4 * ndf)]
    for layer in (0, 1):
        for index, (cin, cout) in zip((0, 2, 4, 6), widths, strict=True):
            prefix = f"layer{layer}.{index}.module"
            sd[f"{prefix}.bias"] = rng.standard_normal(cout).astype(np.float32) * 0.1
            u = rng.standard_normal(cout).astype(np.float32)
            sd[f"{prefix}.weight_u"] = u / np.linalg.norm(u)
            sd[f"{prefix}.weight_v"] = rng.standard_normal(cin * 16).astype(np.float32)
            sd[f"{prefix}.weight_bar"] = rng.standard_normal((cout, cin, 4, 4)).astype(np.float32)
    return sd


def test_discriminator_conversion_keeps_scales_and_u_vectors():
    sd = reference_discriminator_state_dict(8, seed=0)
    params, spectral, config = convert.convert_discriminator(sd)
    assert config == {"features": 8, "num_layers": 2, "num_scales": 2}
    # layer1 is the full-resolution scale (scale0), layer0 the half-resolution one (scale1).
    np.testing.assert_array_equal(
        params["scale0"]["conv3"]["kernel"], sd["layer1.6.module.weight_bar"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(params["scale1"]["conv1"]["bias"], sd["layer0.2.module.bias"])
    np.testing.assert_array_equal(spectral["scale1"]["conv0"]["u"], sd["layer0.0.module.weight_u"])

    # One call: the output uses sigma from one power iteration started at the converted u.
    model = MultiScaleDiscriminator(**config)
    a, _ = masked_inputs(1, 32, 32)
    (full, _), _ = model.apply(
        {"params": params, "spectral": spectral}, a, a, update_stats=True, mutable=["spectral"]
    )
    x = torch.from_numpy(np.concatenate([a, a], -1).transpose(0, 3, 1, 2).copy())
    for index, stride in zip((0, 2, 4, 6), (2, 2, 1, 1), strict=True):
        w = sd[f"layer1.{index}.module.weight_bar"]
        u = sd[f"layer1.{index}.module.weight_u"]
        matrix = w.reshape(w.shape[0], -1)
        v = matrix.T @ u / np.linalg.norm(matrix.T @ u)
        u = matrix @ v / np.linalg.norm(matrix @ v)
        weight = torch.from_numpy(w / (u @ matrix @ v))
        x = torch.nn.functional.conv2d(
            x, weight, torch.from_numpy(sd[f"layer1.{index}.module.bias"]), stride=stride, padding=2
        )
        if index != 6:
            x = torch.nn.functional.leaky_relu(x, 0.2)
    np.testing.assert_allclose(
        np.asarray(full), x.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4
    )

    del sd["layer0.4.module.bias"]
    with pytest.raises(convert.ConversionError, match="scale1/conv2/bias"):
        convert.convert_discriminator(sd)


def test_overwrite_replaces_an_output_only_once_the_new_one_is_written(
    small_state_dict_file, tmp_path, monkeypatch
):
    out = tmp_path / "gin"
    convert.run_command("torch-generator", str(small_state_dict_file), str(out))
    other_file = tmp_path / "other_G.pth"
    torch.save(torch_reference.random_state_dict(ngf=16, seed=1), other_file)
    other, _ = convert.convert_generator(convert.load_torch_state_dict(other_file))

    convert.run_command("torch-generator", str(other_file), str(out), overwrite=True)
    _, variables = checkpointing.load_generator(out)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(other), strict=True)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gin", "other_G.pth"]

    # A conversion that fails, in the input or while writing, leaves the old output as it was.
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(convert.ConversionError):
        convert.run_command("torch-generator", str(bad), str(out), overwrite=True)
    write_items = checkpointing._write_items

    def write_then_fail(directory, items):
        write_items(directory, items)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpointing, "_write_items", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert.run_command("torch-generator", str(small_state_dict_file), str(out), overwrite=True)
    monkeypatch.undo()
    _, variables = checkpointing.load_generator(out)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(other), strict=True)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "gin", "other_G.pth"]

    # The discriminator's output too.
    d_out, d_file = tmp_path / "d", tmp_path / "latest_net_D.pth"
    for seed in (0, 1):
        sd = reference_discriminator_state_dict(8, seed=seed)
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, d_file)
        convert.run_command("torch-discriminator", str(d_file), str(d_out), overwrite=True)
    config, d_variables = checkpointing.load_discriminator(d_out)
    assert config == {"features": 8, "num_layers": 2, "num_scales": 2}
    np.testing.assert_array_equal(
        d_variables["spectral"]["scale1"]["conv0"]["u"], sd["layer0.0.module.weight_u"]
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert.run_command("torch-discriminator", str(d_file), str(d_out))
