"""A checkpoint's record of itself: the size and sha256 of every file Orbax wrote, kept in
`<step>/DIGESTS_FILE` once the checkpoint is final, and checked before it is read.

`write_digests` hashes a finished checkpoint directory; `verify` compares the files now there
with the record and raises `CorruptFileError` naming the first file that is missing, of
another size (truncated) or of other content (altered). A directory without a record (written
before digests existed, or by a process killed between Orbax's finalisation and the digest)
is not checked: `verify` returns False.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from deepgin_jax.atomic import atomic_write
from deepgin_jax.paths import as_path, is_remote

if TYPE_CHECKING:
    from etils import epath

DIGESTS_FILE = "sha256.json"
_CHUNK = 8 << 20


class CorruptFileError(Exception):
    """A checkpoint file differs from its recorded digest: `path` names it."""

    def __init__(self, path: epath.Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _files(directory: epath.Path) -> list[str]:
    """Every file under `directory`, as paths relative to it ('/'-separated), sorted."""
    if not is_remote(directory):
        return sorted(
            os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            for root, _, names in os.walk(directory)
            for name in names
        )
    _forget_cached_listings(directory)
    found = []
    pending = [(directory, "")]
    while pending:
        folder, prefix = pending.pop()
        for child in folder.iterdir():
            relative = f"{prefix}{child.name}"
            if child.is_dir():
                pending.append((child, relative + "/"))
            else:
                found.append(relative)
    return sorted(found)


def _forget_cached_listings(directory: epath.Path) -> None:
    """gcsfs caches listings, and TensorStore writes Orbax's arrays past it."""
    from etils.epath import backend

    if directory._backend is backend.fsspec_backend:  # epath has no public accessor
        backend.fsspec_backend.fs(directory).invalidate_cache(os.fspath(directory))


def _sha256(path: epath.Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _hash_all(directory: epath.Path, names: Iterable[str]) -> dict[str, tuple[int, str]]:
    names = list(names)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda name: _sha256(directory / name), names)
        return dict(zip(names, results, strict=True))


def write_digests(directory: str | os.PathLike) -> None:
    """Records the size and sha256 of every file of the finished checkpoint `directory`."""
    directory = as_path(directory)
    names = [n for n in _files(directory) if n != DIGESTS_FILE and "/" + n != DIGESTS_FILE]
    hashed = _hash_all(directory, names)
    files = {name: {"size": size, "sha256": hex_} for name, (size, hex_) in hashed.items()}
    record = {"algorithm": "sha256", "files": files, "files_sha256": _record_digest(files)}
    with atomic_write(directory / DIGESTS_FILE, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def _record_digest(files: dict) -> str:
    """The sha256 of the record's file list, so that an altered record names itself."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def has_digests(directory: str | os.PathLike) -> bool:
    return (as_path(directory) / DIGESTS_FILE).exists()


def verify(directory: str | os.PathLike, items: Iterable[str] | None = None) -> bool:
    """Checks the files of `directory` (those of the named `items` only, when given) against
    its record. Returns False when there is no record; raises CorruptFileError."""
    directory = as_path(directory)
    record_path = directory / DIGESTS_FILE
    if not record_path.exists():
        return False
    try:
        record = json.loads(record_path.read_text())
        recorded = record["files"]
        intact = _record_digest(recorded) == record["files_sha256"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptFileError(record_path, f"unreadable digest record ({e})") from e
    if not intact:
        raise CorruptFileError(record_path, "the digest record was altered")
    if items is not None:
        prefixes = tuple(f"{item}/" for item in items)
        recorded = {name: v for name, v in recorded.items() if name.startswith(prefixes)}
    present = set(_files(directory))
    for name in sorted(recorded):
        if name not in present:
            raise CorruptFileError(directory / name, "missing (deleted or never written)")
    hashed = _hash_all(directory, sorted(recorded))
    for name, expected in sorted(recorded.items()):
        size, hex_ = hashed[name]
        if size != expected["size"]:
            raise CorruptFileError(
                directory / name, f"{size} bytes, {expected['size']} recorded (truncated?)"
            )
        if hex_ != expected["sha256"]:
            raise CorruptFileError(directory / name, "content differs from its sha256 (altered)")
    return True
