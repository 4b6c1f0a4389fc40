"""The user's cache folder for what the commands keep between runs: `$XDG_CACHE_HOME/deepgin_jax`,
else `~/.cache/deepgin_jax`.

- `pretrained/`: where `python -m deepgin_jax.pretrained` writes the pretrained networks by
  default and where training looks for the VGG-19 (`$DEEPGIN_PRETRAINED_DIR` moves it);
- `xla/`: the persistent compilation cache (`compile_cache`), so that a rerun skips compiling,
  and in `xla/traced/` the traced generator (`trace_cache`), so that it skips tracing too.
"""

from __future__ import annotations

import os
from pathlib import Path

PRETRAINED_ENV_VAR = "DEEPGIN_PRETRAINED_DIR"
VGG19_FILE = "vgg19.npz"


def cache_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "deepgin_jax"


def pretrained_dir() -> Path:
    """The folder of the converted pretrained networks (the module docstring says which)."""
    if folder := os.environ.get(PRETRAINED_ENV_VAR):
        return Path(folder).expanduser()
    return cache_root() / "pretrained"


def default_vgg19_path() -> Path:
    """The VGG-19 of the perceptual and style losses, as `python -m deepgin_jax.pretrained`
    writes it by default."""
    return pretrained_dir() / VGG19_FILE
