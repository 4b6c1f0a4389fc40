"""DeepGIN in JAX/Flax: the networks, training, inference, evaluation and export."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Heavy submodules load on first use, so `import deepgin_jax` stays cheap for the CLIs.
_LAZY = {
    "DeepGIN": "deepgin_jax.models",
    "MultiScaleDiscriminator": "deepgin_jax.models",
    "load_generator": "deepgin_jax.shipped",  # shipped.load_any_generator
    "Inpainter": "deepgin_jax.inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepgin_jax' has no attribute {name!r}")


__all__ = sorted(_LAZY)
