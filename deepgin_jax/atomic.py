"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from deepgin_jax.paths import as_path, is_remote


def _temporary_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file beside `path`; on success it is fsynced and renamed onto `path`.

    On an exception (KeyboardInterrupt and `cli.Terminated` from a signal included) the
    temporary file is removed and `path` is left untouched. The temporary file's name is chosen
    before it is created, so that an exception arriving at any point after that still finds it.
    A remote `path` (`gs://...`) is written in one upload when the block ends: an object store
    replaces an object whole or not at all.
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
    tmp: Path | None = _temporary_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        try:
            # 0o666 less the umask: the permissions of a file written in place (not 0600).
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            tmp = None  # another writer's file: not ours to remove
            raise
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
