"""The persistent XLA compilation cache: compiled programs kept on disk for later processes.

Compiling the generator takes a CPU ~10-20 s, every process, every input size; with the cache a
later run reads the compiled program back instead. The command lines (`inpaint`, `app`,
`evaluate`, `export`, `train`) turn it on before anything compiles (`--xla_cache`); a program using
the library turns it on with one line before its first JAX computation:

  from deepgin_jax import compile_cache; compile_cache.enable()

The library does not do this by itself: JAX's cache is one setting for the whole process,
which belongs to the program that embeds the library, and it only takes effect before the
process's first compilation, which an import cannot promise.

Where (`cache_dir`): the folder given (`--xla_cache DIR`), else $DEEPGIN_XLA_CACHE, else
$JAX_COMPILATION_CACHE_DIR (JAX's own variable), else $XDG_CACHE_HOME/deepgin_jax/xla
(~/.cache/deepgin_jax/xla). "off" (also "none", "0", "false" or empty) disables it.

Processes that share the folder are safe: the cache is given a size bound (`DEFAULT_MAX_BYTES`,
least recently used entries removed first), and with one JAX takes a file lock (`filelock`)
around every read and write, so no process reads an entry another is still writing (without a
bound JAX writes entries in place, unlocked). A corrupt entry is reported and recompiled.

The folder's `traced/` keeps what tracing the generator gives (`deepgin_jax.trace_cache`), so that
a later process does not trace it again to find its compiled program; it is on and off, and
moves, with the cache.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from deepgin_jax import user_cache

ENV_VAR = "DEEPGIN_XLA_CACHE"
OFF_VALUES = ("off", "none", "0", "false", "no", "")
DEFAULT_MAX_BYTES = 2 * 1024**3
# JAX's default (1 s) leaves out small programs (resizes, padding) that together still cost a
# CLI run a few seconds; below this they are quicker to recompile than to read back.
MIN_COMPILE_TIME_S = 0.2


def default_dir() -> Path:
    """$XDG_CACHE_HOME/deepgin_jax/xla, or ~/.cache/deepgin_jax/xla."""
    return user_cache.cache_root() / "xla"


def is_off(setting: str) -> bool:
    return setting.strip().lower() in OFF_VALUES


def cache_dir(setting: str | os.PathLike | None = None) -> Path | None:
    """The cache folder for `setting` (a folder, "off", or None: the environment's or the
    default; module docstring), or None when disabled."""
    if setting is None:
        setting = os.environ.get(ENV_VAR)
    if setting is None:
        setting = os.environ.get("JAX_COMPILATION_CACHE_DIR")
        if setting is not None and not setting.strip():
            return None
    if setting is None:
        return default_dir()
    if isinstance(setting, str) and is_off(setting):
        return None
    return Path(setting).expanduser()


def enable(setting: str | os.PathLike | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at `cache_dir(setting)` (or turns it off);
    returns the folder, or None when off. Takes effect only if called before the process's
    first compilation. JAX's own size and threshold settings, where set in the environment
    (JAX_COMPILATION_CACHE_MAX_SIZE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS), are kept.
    """
    import jax

    folder = cache_dir(setting)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    has_filelock = importlib.util.find_spec("filelock") is not None
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and has_filelock:
        jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
    return folder
