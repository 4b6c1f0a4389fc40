"""A restricted reader of TorchScript archives (`torch.jit.save` zips): the module tree's
attributes and tensors, as NumPy arrays, without PyTorch and without running the archive's code.

`data.pkl` is unpickled by an unpickler that accepts only what the format needs: TorchScript's
module placeholders (`__torch__.*`, read as `ScriptObject`s), tensor rebuilds from the archive's
storage records, typed-list tags and `OrderedDict`. Anything else is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepgin_jax.convert.layout import ConversionError


class ScriptObject:
    """A TorchScript module or object as stored in `data.pkl`: its class name and attributes."""

    qualified_name = "?"

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.qualified_name}: state is not a dict")
        self.state = state

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualified_name}, {sorted(getattr(self, 'state', {}))})"


@functools.cache
def _script_class(qualified_name: str) -> type[ScriptObject]:
    return type("ScriptObjectOf", (ScriptObject,), {"qualified_name": qualified_name})


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _rebuild_tensor(
    storage: np.ndarray,
    storage_offset: int,
    size: Sequence[int],
    stride: Sequence[int],
    *unused: Any,
) -> np.ndarray:
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride, storage_offset)):
        raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size} / stride {stride} at offset {storage_offset} overruns "
            f"its storage of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _identity_list(values: Any) -> list:
    return list(values)


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's `data.pkl` into ScriptObjects holding NumPy arrays."""

    _TORCH_GLOBALS: Mapping[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch.jit._pickle", "build_intlist"): _identity_list,
        ("torch.jit._pickle", "build_doublelist"): _identity_list,
        ("torch.jit._pickle", "build_boollist"): _identity_list,
        ("torch.jit._pickle", "build_tensorlist"): _identity_list,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file: io.BufferedIOBase, read_record: Callable[[str], bytes], big: bool):
        super().__init__(file)
        self._read_record = read_record
        self._big_endian = big
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._TORCH_GLOBALS:
            return self._TORCH_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript file")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            dtype = storage_type.dtype.newbyteorder(">" if self._big_endian else "<")
            raw = self._read_record(f"data/{key}")
            storage = np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype.newbyteorder("="))
            if storage.size < int(numel):
                raise pickle.UnpicklingError(
                    f"storage {key} has {storage.size} elements, {numel} declared"
                )
            self._storages[key] = storage
        return self._storages[key]


def read_torchscript(path: str | os.PathLike) -> ScriptObject:
    """Parses a TorchScript file (`torch.jit.save` zip) into its root ScriptObject.

    Only the module attributes are read (tensors as NumPy arrays, ints, lists); the archive's
    code is never run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ConversionError(f"{path} is not a TorchScript (zip) archive: {e}") from e
    with archive:
        roots = [n[: -len("data.pkl")] for n in archive.namelist() if n.count("/") == 1]
        roots = [r for r in roots if r + "data.pkl" in archive.namelist()]
        if len(roots) != 1:
            raise ConversionError(f"{path}: expected one '<root>/data.pkl' in the archive")
        root = roots[0]
        names = set(archive.namelist())
        byteorder = root + "byteorder"
        big = byteorder in names and archive.read(byteorder).strip() == b"big"

        def read_record(name: str) -> bytes:
            if root + name not in names:
                raise pickle.UnpicklingError(f"{path}: record {name!r} is missing")
            return archive.read(root + name)

        data = io.BytesIO(archive.read(root + "data.pkl"))
        try:
            obj = _TorchScriptUnpickler(data, read_record, big).load()
        except Exception as e:  # any failure to parse an untrusted file is a bad file
            raise ConversionError(f"{path}: cannot read the TorchScript module: {e}") from e
    if not isinstance(obj, ScriptObject):
        raise ConversionError(f"{path}: the archive's root is not a TorchScript module")
    return obj


def script_module_contents(
    root: ScriptObject,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, other attributes) of a module tree by dotted path ('net.layers.conv.weight')."""
    tensors: dict[str, np.ndarray] = {}
    attributes: dict[str, Any] = {}

    visiting: set[int] = set()

    def walk(obj: ScriptObject, prefix: str) -> None:
        if id(obj) in visiting:
            raise ConversionError(f"module tree has a cycle at {prefix!r}")
        visiting.add(id(obj))
        for key, value in getattr(obj, "state", {}).items():
            name = f"{prefix}{key}"
            if isinstance(value, ScriptObject):
                walk(value, f"{name}.")
            elif isinstance(value, np.ndarray):
                tensors[name] = value
            else:
                attributes[name] = value

    walk(root, "")
    return tensors, attributes
