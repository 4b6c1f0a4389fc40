"""Where training images come from: image files in folders and archives, and random-access sources.

* `list_image_files` / `split_image_files`: the images of a folder (recursive, sorted), split
  by a `train/` + `test/` layout or by a deterministic hash of each file's relative path.
* `iter_archive_images`: (name, encoded bytes) of every image in a folder, `.zip` or `.tar*`,
  used by the dataset builders to store the original bytes without re-encoding.
* `ImageFolderSource`: a random-access source over image files (no prepare step).
* `DecodedImageSource`: decodes any such source into uint8 RGB through `image_io`; an
  unreadable record is skipped with a counted warning and replaced by the next readable one,
  so one bad file never stops an epoch.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from absl import logging

from deepgin_jax import image_io

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "test": ("test", "testing"),
    "validation": ("validation", "val", "valid"),
}


def is_image_name(name: str | os.PathLike) -> bool:
    """True for a visible image file name (no hidden or `__MACOSX` component)."""
    parts = PurePosixPath(os.fspath(name).replace(os.sep, "/")).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS if parts else False


def list_image_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted by their relative POSIX path (stable across machines)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} does not exist or is not a folder.")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in candidates if p.is_file() and is_image_name(p.relative_to(folder))]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def holdout_score(relative_name: str) -> float:
    """A stable pseudo-random number in [0, 1) for a file name (MD5 of its POSIX path)."""
    digest = hashlib.md5(relative_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_holdout(relative_name: str, fraction: float) -> bool:
    """True if the file belongs to the held-out ("test") part of a hash split."""
    return holdout_score(relative_name) < fraction


def find_split_folder(folder: Path, split: str) -> Path | None:
    """`folder/<split>` (or a usual alias, e.g. `val` for "validation") if it exists."""
    for name in SPLIT_FOLDER_NAMES.get(split, (split,)):
        if (folder / name).is_dir():
            return folder / name
    return None


def has_split_layout(folder: Path) -> bool:
    """True if `folder` holds a `train/` (or `training/`) subfolder."""
    return find_split_folder(folder, "train") is not None


def split_image_files(
    folder: str | os.PathLike, split: str, *, holdout_fraction: float = 0.0
) -> list[Path]:
    """The images of one split of a folder.

    With a `train/` + `test/` (or `validation/`) layout the split's subfolder is used. Otherwise
    every image is in "train" unless `holdout_fraction` > 0, in which case that fraction of
    files (chosen by a hash of the relative path, so adding files does not move others) forms
    "test" and the rest "train"; "all" always means every image.

    Raises:
      FileNotFoundError: no such folder.
      ValueError: unknown split, or the split is empty.
    """
    folder = Path(folder)
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}.")
    if split != "all" and has_split_layout(folder):
        split_folder = find_split_folder(folder, split)
        if split_folder is None:
            raise ValueError(f"{folder} has a train/ folder but no folder for split {split!r}.")
        files = list_image_files(split_folder)
    else:
        files = list_image_files(folder)
        if split == "test":
            files = [f for f in files if in_holdout(_relative(f, folder), holdout_fraction)]
        elif split == "train":
            files = [f for f in files if not in_holdout(_relative(f, folder), holdout_fraction)]
        elif split != "all":
            raise ValueError(
                f"Split {split!r} of {folder}: without train/ and test/ subfolders only "
                "'train', 'test' (with holdout_fraction > 0) and 'all' exist."
            )
    if not files:
        raise ValueError(
            f"No images for split {split!r} in {folder} "
            f"(extensions {sorted(IMAGE_EXTENSIONS)}, holdout_fraction={holdout_fraction})."
        )
    return files


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_tar(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def iter_archive_images(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(relative POSIX name, encoded bytes) for each image in a folder, zip or tar archive.

    Folders and zips are visited in sorted name order; tars stream in archive order (random
    access into a large tar is too slow).
    """
    path = Path(path)
    if path.is_dir():
        for file in list_image_files(path):
            yield _relative(file, path), file.read_bytes()
    elif path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            infos = sorted(archive.infolist(), key=lambda info: info.filename)
            for info in infos:
                if not info.is_dir() and is_image_name(info.filename):
                    yield info.filename, archive.read(info)
    elif _is_tar(path):
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and is_image_name(member.name):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
    else:
        raise ValueError(f"{path} is neither a folder nor a .zip/.tar archive.")


class RecordSource(Protocol):
    """Random access to records, as Grain and `tfds.data_source` provide."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class ImageFolderSource:
    """Random access to image files: record `i` is `{"image": path, "file_name": relative name}`."""

    def __init__(self, files: Sequence[str | os.PathLike], *, root: str | os.PathLike = ""):
        self._files = [os.fspath(f) for f in files]
        self._root = os.fspath(root)

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, split: str = "train", *, holdout_fraction: float = 0.0
    ) -> ImageFolderSource:
        files = split_image_files(folder, split, holdout_fraction=holdout_fraction)
        return cls(files, root=folder)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, str]:
        path = self._files[index]
        name = os.path.relpath(path, self._root) if self._root else path
        return {"image": path, "file_name": name}

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self)} files under {self._root or '.'!r})"


def _record_name(record: Any, index: int) -> str:
    name = record.get("file_name") if isinstance(record, dict) else None
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name or f"record {index}"


def decode_record(record: Any, index: int = 0) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` of a record `{"image": path | bytes, ...}` (or a bare path/bytes)."""
    image = record["image"] if isinstance(record, dict) else record
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
        return image
    return image_io.read_rgb(image, name=_record_name(record, index))


class DecodedImageSource:
    """Decodes the records of `source` into uint8 RGB `[H, W, 3]`, skipping unreadable ones.

    An unreadable record `i` is replaced by the next readable record (`i + 1`, `i + 2`, ...,
    wrapping around), so the replacement is deterministic. Each unreadable record is logged
    once per process with a running count.
    """

    def __init__(self, source: RecordSource):
        self._source = source
        self._unreadable: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._source)

    @property
    def num_unreadable(self) -> int:
        """How many distinct records this process found unreadable so far."""
        return len(self._unreadable)

    def __getitem__(self, index: int) -> np.ndarray:
        size = len(self._source)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {size} records")
        index %= size
        for offset in range(size):
            candidate = (index + offset) % size
            if candidate in self._unreadable:
                continue
            record = self._source[candidate]
            try:
                return decode_record(record, candidate)
            except image_io.ImageReadError as e:
                self._note_unreadable(candidate, e)
        raise RuntimeError(f"None of the {size} records of {self._source!r} is a readable image.")

    def _note_unreadable(self, index: int, error: Exception) -> None:
        with self._lock:
            self._unreadable.add(index)
            count = len(self._unreadable)
        logging.warning(
            "Skipping unreadable image (%s); the next readable one is used instead "
            "[%d unreadable so far in this process].",
            error,
            count,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DecodedImageSource({self._source!r})"
