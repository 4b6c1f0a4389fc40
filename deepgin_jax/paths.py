"""Local and remote paths alike: a training workdir may be a local folder or a URL that
`etils.epath` and Orbax both reach (`gs://bucket/...`; epath reads and writes it through
fsspec/gcsfs, Orbax's TensorStore through its own GCS driver)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing epath takes 50 ms that a command on local files need not pay
    from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (`gs://`, `s3://`, ...) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a URL as it is, a local path made absolute (Orbax wants
    absolute local paths)."""
    from etils import epath

    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()
