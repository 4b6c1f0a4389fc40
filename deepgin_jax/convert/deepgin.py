"""The reference DeepGIN's PyTorch state dicts -> this package's Flax parameters (spec 8.3).

`convert_generator` maps the reference `ImageTinker2` (242 tensors) onto `DeepGIN`,
`convert_discriminator` its `MultiscaleDiscriminator` onto `MultiScaleDiscriminator`. Every
tensor must land in exactly one parameter of the expected shape; a missing, unexpected or
mis-shaped key is a `ConversionError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepgin_jax.convert.layout import ConversionError, fill_params, oihw_to_hwio, variable_shapes
from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION, MultiScaleDiscriminator
from deepgin_jax.models.generator import DeepGIN

StateDict = Mapping[str, np.ndarray]

_IMAGE, _MASK = (1, 64, 64, 3), (1, 64, 64, 1)  # any size traces the same parameters

# The refinement stage's reference names -> ours. Bottleneck blocks are renamed in execution
# order (mres1, mres2, mres5, attention, mres3, mres4, mres6; spec 2.3).
_REFINE_NAMES = {
    "r_en_conv1": "enc_conv1",
    "r_en_conv2": "enc_conv2",
    "r_en_conv3": "enc_conv3",
    "r_en_conv4": "enc_conv4",
    "r_en_conv5": "enc_conv5",
    "r_en_skp_conv3": "skip_conv_1_4",
    "r_en_skp_conv4": "skip_conv_1_8",
    "r_md_mres1": "bottleneck1",
    "r_md_mres2": "bottleneck2",
    "r_md_mres5": "bottleneck3",
    "r_md_mres3": "bottleneck4",
    "r_md_mres4": "bottleneck5",
    "r_md_mres6": "bottleneck6",
    "r_md_satn1": "attention_1_16",
    "r_de_satn2": "attention_1_8",
    "r_de_satn3": "attention_1_4",
    "r_de_conv1": "dec_conv_1_8",
    "r_de_mix_conv1": "mix_conv_1_8",
    "r_de_conv2": "dec_conv_1_4",
    "r_de_mix_conv2": "mix_conv_1_4",
    "r_de_conv2_lr": "lowres_conv",
    "r_de_conv3_lr": "lowres_out",
    "r_de_conv3": "dec_conv_1_2",
    "r_de_conv4": "dec_conv_1_1",
    "r_de_conv5": "out_conv",
    "r_de_conv5_lr_alpha": "alpha_conv",
}
# Indices of lr_coarse_tinker (an nn.Sequential) that hold parameters (spec 1).
_COARSE_NAMES = {
    "1": "enc_conv1",
    "4": "enc_conv2",
    "7": "enc_conv3",
    "10": "enc_conv4",
    **{str(12 + i): f"block{i + 1}" for i in range(6)},
    "20": "dec_conv1",
    "24": "dec_conv2",
    "28": "dec_conv3",
    "31": "out_conv",
}
# Inside SPD and self-attention blocks.
_INNER_NAMES = {"fusion9.conv": "fusion", "fusion5.conv": "fusion", "W": "out"}


def _generator_flax_path(key: str) -> str | None:
    """'r_md_mres5.branch2.conv.weight' -> 'refine/bottleneck3/branch2/kernel' (None: no match)."""
    match = re.fullmatch(r"(.+)\.(weight|bias)", key)
    if not match:
        return None
    module, kind = match.groups()
    if module.startswith("lr_coarse_tinker."):
        index, _, inner = module.removeprefix("lr_coarse_tinker.").partition(".")
        stage, top = "coarse", _COARSE_NAMES.get(index)
    else:
        top_name, _, inner = module.partition(".")
        stage, top = "refine", _REFINE_NAMES.get(top_name)
    if top is None:
        return None
    parts = [stage, top]
    if inner:
        branch = re.fullmatch(r"branch(\d+)\.conv", inner)
        parts.append(f"branch{branch.group(1)}" if branch else _INNER_NAMES.get(inner, inner))
    return "/".join([*parts, "kernel" if kind == "weight" else "bias"])


def generator_config_from_state_dict(state_dict: StateDict) -> dict[str, Any]:
    """The DeepGIN fields a reference state dict implies (its width, from the first conv)."""
    key = "lr_coarse_tinker.1.weight"
    if key not in state_dict:
        raise ConversionError(f"not a DeepGIN generator state dict: no {key!r}")
    out_channels, in_channels = state_dict[key].shape[:2]
    if in_channels != 4:
        raise ConversionError(f"{key} expects {in_channels} input channels; DeepGIN uses 4")
    return {"base_features": int(out_channels) * 2}


def convert_generator(state_dict: StateDict) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reference `ImageTinker2` state dict (242 tensors) -> (Flax params, model config)."""
    model_config = generator_config_from_state_dict(state_dict)
    found: dict[str, tuple[str, np.ndarray]] = {}
    unmapped = []
    for key, value in state_dict.items():
        path = _generator_flax_path(key)
        if path is None:
            unmapped.append(key)
            continue
        if path in found:
            raise ConversionError(f"two keys map to {path!r} (second: {key!r})")
        value = np.asarray(value)
        is_kernel = path.endswith("/kernel") and value.ndim == 4  # other shapes: named below
        found[path] = (key, oihw_to_hwio(value) if is_kernel else value)
    expected = variable_shapes(DeepGIN(**model_config), _IMAGE, _MASK)["params"]
    params = fill_params(expected, found, "generator state dict", unmapped)
    return params, model_config


_DISCRIMINATOR_KEY = re.compile(r"layer(\d+)\.(\d+)\.module\.(weight_bar|bias|weight_u|weight_v)")
_DISCRIMINATOR_LEAF = {"weight_bar": "kernel", "bias": "bias", "weight_u": "u"}


def convert_discriminator(state_dict: StateDict) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """A reference `MultiscaleDiscriminator` state dict -> (params, spectral state, config).

    The reference's `layer1` is the full-resolution scale (our `scale0`) and `layer0` the
    half-resolution one (`scale1`). Its u vectors are kept; v is re-derived from u on every
    call, so `weight_v` is not needed.
    """
    matches = {key: m for key in state_dict if (m := _DISCRIMINATOR_KEY.fullmatch(key))}
    layer_ids = sorted({int(m.group(1)) for m in matches.values()})
    if not layer_ids:
        raise ConversionError("not a DeepGIN discriminator state dict: no 'layerN.M.module.*' keys")
    # 0, 2, 4, 6: Sequential indices of the convs between LeakyReLUs
    conv_indices = sorted({int(m.group(2)) for m in matches.values()})
    found: dict[str, tuple[str, np.ndarray]] = {}
    for key, match in matches.items():
        layer, index, kind = int(match.group(1)), int(match.group(2)), match.group(3)
        if kind == "weight_v":
            continue
        scale = f"scale{len(layer_ids) - 1 - layer}"
        value = np.asarray(state_dict[key], dtype=np.float32)
        if kind == "weight_bar" and value.ndim == 4:
            value = oihw_to_hwio(value)
        name = f"{scale}/conv{conv_indices.index(index)}/{_DISCRIMINATOR_LEAF[kind]}"
        found[name] = (key, value)
    first_key = f"layer{layer_ids[0]}.0.module.weight_bar"
    if first_key not in state_dict:
        raise ConversionError(f"not a DeepGIN discriminator state dict: no {first_key!r}")
    config = {
        "features": int(state_dict[first_key].shape[0]),
        "num_layers": len(conv_indices) - 2,
        "num_scales": len(layer_ids),
    }
    expected = variable_shapes(MultiScaleDiscriminator(**config), _IMAGE, _IMAGE)
    unmapped = [key for key in state_dict if key not in matches]
    params = {k: v for k, v in found.items() if not k.endswith("/u")}
    spectral = {k: v for k, v in found.items() if k.endswith("/u")}
    return (
        fill_params(expected["params"], params, "discriminator state dict", unmapped),
        fill_params(expected[SPECTRAL_COLLECTION], spectral, "discriminator spectral state"),
        config,
    )
