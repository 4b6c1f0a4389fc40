"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from deepgin_jax.paths import as_path, is_remote


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file beside `path`; on success it is fsynced and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left untouched. A remote
    `path` (`gs://...`) is written in one upload when the block ends: an object store replaces
    an object whole or not at all.
    """
    if is_remote(path):
        buffer = io.BytesIO() if "b" in mode else io.StringIO()
        yield buffer
        data = buffer.getvalue()
        remote = as_path(path)
        remote.parent.mkdir(parents=True, exist_ok=True)
        (remote.write_bytes if "b" in mode else remote.write_text)(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
