"""Where `python -m deepgin_jax.pretrained` writes the pretrained networks by default, and where
training looks for them: `$DEEPGIN_PRETRAINED_DIR`, else `$XDG_CACHE_HOME/deepgin_jax/pretrained`,
else `~/.cache/deepgin_jax/pretrained`."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DEEPGIN_PRETRAINED_DIR"
VGG19_FILE = "vgg19.npz"


def pretrained_dir() -> Path:
    """The folder of the converted pretrained networks (the module docstring says which)."""
    if folder := os.environ.get(ENV_VAR):
        return Path(folder).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "deepgin_jax" / "pretrained"


def default_vgg19_path() -> Path:
    """The VGG-19 of the perceptual and style losses, as `python -m deepgin_jax.pretrained`
    writes it by default."""
    return pretrained_dir() / VGG19_FILE
