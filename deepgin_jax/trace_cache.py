"""What tracing the generator's Python produces, kept on disk beside the persistent compilation
cache (`compile_cache`), so that a later process neither traces nor compiles it.

JAX's compilation cache is keyed by the lowered program, so a process reading a compiled
generator back still traces the Flax model first to get it (about 2 s of CPU for DeepGIN-compact,
more than running it on a photo's hole). Here the traced forward pass is kept as serialized
StableHLO (`jax.export`), one file per model configuration and input shape, and the generator's
parameter shapes as JSON; a later process deserializes them in milliseconds.

Where: `<compilation cache folder>/traced/`, on exactly when the compilation cache is on (the
same `--xla_cache` flag and environment variables move or disable both). Every key holds the
versions of jax, jaxlib and flax, the backend, XLA_FLAGS and a digest of the model's source
files, so a file written by other code is never read. Files are written atomically, so two
processes may share the folder; one that cannot be read (corrupt, truncated, of another
signature) is logged, traced again and replaced.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from deepgin_jax.atomic import atomic_write
from deepgin_jax.paths import is_remote

FOLDER = "traced"
EXPORT_SUFFIX = ".stablehlo"
JSON_SUFFIX = ".json"
# The sources whose Python the cached programs come from: a change to any of them is a new key.
_PACKAGE = Path(__file__).resolve().parent
_SOURCES = ("models/*.py", "inference/network.py", "trace_cache.py")


def folder() -> Path | None:
    """`<compilation cache folder>/traced`, or None while JAX's compilation cache is off (or
    is remote: `gs://...`, where a per-process read would cost more than tracing)."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / FOLDER if cache and not is_remote(cache) else None


@functools.cache
def _source_digest() -> str:
    digest = hashlib.sha256()
    for pattern in _SOURCES:
        for path in sorted(_PACKAGE.glob(pattern)):
            digest.update(path.relative_to(_PACKAGE).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _flax_version() -> str:
    """Flax's version, read without importing it (a process that reads its traced programs
    back need not)."""
    return importlib.metadata.version("flax")


def fingerprint() -> dict[str, str]:
    """What besides the caller's own key decides the traced program."""
    import jaxlib.version

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.version.__version__,
        "flax": _flax_version(),
        "backend": jax.default_backend(),
        "x64": str(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "sources": _source_digest(),
    }


def module_fields(module: Any) -> tuple[tuple[str, Any], ...]:
    """A Flax module's configuration (its dataclass fields but parent and name), for a key."""
    return tuple(
        (field.name, getattr(module, field.name))
        for field in dataclasses.fields(module)
        if field.name not in ("parent", "name")
    )


def key(name: str, parts: Any) -> str:
    """A file stem for `name` and `parts` (anything `repr` writes reproducibly) under this
    process's `fingerprint()`."""
    text = repr((sorted(fingerprint().items()), parts))
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _write(path: Path, data: bytes) -> None:
    try:
        with atomic_write(path) as f:
            f.write(data)
    except OSError as e:  # a read-only or full cache folder: the program still runs
        logging.warning("Could not keep the traced program in %s: %s", path, e)


def _signature(args: Sequence[Any]) -> tuple[Any, tuple[jax.ShapeDtypeStruct, ...]]:
    leaves, tree = jax.tree.flatten((tuple(args), {}))  # as `Exported.in_tree`: (args, kwargs)
    return tree, tuple(abstract(leaf) for leaf in leaves)


def abstract(array: Any) -> jax.ShapeDtypeStruct:
    """`array`'s shape and dtype as JAX computes with it (float64 is float32 without x64)."""
    return jax.ShapeDtypeStruct(np.shape(array), jax.dtypes.canonicalize_dtype(array.dtype))


def exported(stem: str, function: Callable, args: Sequence[Any]) -> jax.export.Exported:
    """The `jax.export` of jitted `function` at `args`' shapes (arrays or ShapeDtypeStructs):
    read from `folder()/<stem>.stablehlo` when a readable file of the same signature is there,
    else traced and written there (`folder()` must not be None)."""
    directory = folder()
    if directory is None:
        raise ValueError("the compilation cache is off: nowhere to keep traced programs")
    path = directory / f"{stem}{EXPORT_SUFFIX}"
    tree, avals = _signature(args)
    if path.exists():
        try:
            program = jax.export.deserialize(bytearray(path.read_bytes()))
            have = tuple(abstract(a) for a in program.in_avals)
            if program.in_tree != tree or have != avals:
                raise ValueError("its input signature is not this call's")
            return program
        except Exception as e:  # any unreadable file is traced again
            logging.warning("Ignoring the traced program %s (%s): tracing it again.", path, e)
    program = jax.export.export(function)(*args)
    _write(path, program.serialize())
    return program


def cached_json(stem: str, compute: Callable[[], Any], *, read: bool = True) -> Any:
    """`compute()` (a JSON value), read from `folder()/<stem>.json` when there (and `read`),
    else computed and written there; computed every time while `folder()` is None."""
    directory = folder()
    if directory is None:
        return compute()
    path = directory / f"{stem}{JSON_SUFFIX}"
    if read and path.exists():
        try:
            return json.loads(path.read_text())["value"]
        except Exception as e:
            logging.warning("Ignoring %s (%s): computing it again.", path, e)
    value = compute()
    _write(path, json.dumps({"value": value}).encode())
    return value
