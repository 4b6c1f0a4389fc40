"""Frozen network weights (VGG-19, LPIPS, FID Inception) as one `.npz` file each.

A file holds the parameter tree flattened to '/'-joined keys, plus a JSON string under
`__meta__` describing how the network expects its input (for example VGG's colour order,
range and mean), so the weights always travel with their convention.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepgin_jax.atomic import atomic_write

_META_KEY = "__meta__"
FORMAT_VERSION = 1  # recorded as meta["format_version"] by the LPIPS and FID converters
SEPARATOR = "/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A tree of nested mappings as {'/'-joined path: leaf} (what `flax.traverse_util`'s
    `flatten_dict(tree, sep="/")` gives; written here so that reading weights imports no
    Flax). Empty mappings are left out."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + SEPARATOR))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten`: {'a/b': leaf} -> {'a': {'b': leaf}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, name = path.split(SEPARATOR)
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


def save_weights(
    path: str | os.PathLike, params: Mapping[str, Any], meta: Mapping[str, Any]
) -> None:
    """Writes `params` and `meta` to `path` (.npz) atomically."""
    flat = flatten(params)
    if _META_KEY in flat:
        raise ValueError(f"parameter name {_META_KEY!r} is reserved")
    buffer = io.BytesIO()
    arrays = {name: np.asarray(value) for name, value in flat.items()}
    np.savez(buffer, **arrays, **{_META_KEY: np.asarray(json.dumps(dict(meta)))})
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a file written by `save_weights`: returns (params tree, meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a weights .npz file: {e}") from e
    if _META_KEY not in flat:
        raise ValueError(f"{path} has no {_META_KEY!r} entry; was it written by save_weights?")
    meta = json.loads(str(flat.pop(_META_KEY)))
    return unflatten(flat), meta
