"""The persistent compilation cache of the inference commands: where it goes, that a second
process compiles nothing the first compiled (two processes sharing the folder), that it can be
turned off, and the quiet backend probes."""

from __future__ import annotations

import logging as std_logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import logging
from PIL import Image

from deepgin_jax import cli, compile_cache
from tests.inpainting_helpers import tiny_checkpoint

# JAX_LOG_COMPILES logs this for a compilation and for a program read back from the cache alike;
# JAX_EXPLAIN_CACHE_MISSES tells the two apart when the cache is on.
NETWORK_READY = "Finished XLA compilation of jit(_reconstruct)"
NETWORK_MISSED = "PERSISTENT COMPILATION CACHE MISS for 'jit__reconstruct'"
NETWORK_READ_BACK = "Persistent compilation cache hit for 'jit__reconstruct'"
PROBE_LINE = "Unable to initialize backend"


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    for name in (compile_cache.ENV_VAR, "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return monkeypatch


def test_cache_folder_default_move_and_off(clean_environment, tmp_path):
    monkeypatch = clean_environment
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "deepgin_jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.cache_dir() == Path.home() / ".cache" / "deepgin_jax" / "xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own: kept
    assert compile_cache.cache_dir() == tmp_path / "jax"
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine"
    assert compile_cache.cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    for off in ("off", "OFF", "none", "0", ""):
        monkeypatch.setenv(compile_cache.ENV_VAR, off)
        assert compile_cache.cache_dir() is None
        assert compile_cache.cache_dir(off) is None
    assert compile_cache.cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"


def test_backend_probe_lines_only_with_verbosity():
    probes = std_logging.getLogger("jax._src.xla_bridge")
    before = logging.get_verbosity()
    try:
        logging.set_verbosity(logging.INFO)
        cli.quiet_backend_probes()
        assert not probes.isEnabledFor(std_logging.INFO)
        assert probes.isEnabledFor(std_logging.WARNING)  # a GPU JAX cannot use still shows
        logging.set_verbosity(logging.DEBUG)  # -v
        cli.quiet_backend_probes()
        assert probes.level == std_logging.NOTSET  # as the rest of JAX's loggers
    finally:
        logging.set_verbosity(before)
        probes.setLevel(std_logging.NOTSET)


def _inpaint(tmp_path: Path, name: str, *flags: str, **env: str) -> subprocess.Popen:
    """`python -m deepgin_jax.inpaint` on a small photo, logging its compilations."""
    environment = {k: v for k, v in os.environ.items() if k != compile_cache.ENV_VAR}
    environment.update(JAX_LOG_COMPILES="1", JAX_EXPLAIN_CACHE_MISSES="1", **env)
    command = [
        sys.executable,
        "-m",
        "deepgin_jax.inpaint",
        f"--checkpoint={tiny_checkpoint()}",
        f"--image={tmp_path / 'photo.png'}",
        f"--mask={tmp_path / 'mask.png'}",
        f"--output={tmp_path / name}",
        *flags,
    ]
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return stderr


def test_a_second_process_reads_the_network_back_and_off_compiles_again(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(tmp_path / "photo.png")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:25, 12:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cache = tmp_path / "cache"
    # Two processes filling one empty cache folder at once.
    first = [_inpaint(tmp_path, f"{k}.png", f"--xla_cache={cache}") for k in (1, 2)]
    for stderr in map(_finish, first):
        assert NETWORK_MISSED in stderr and NETWORK_READ_BACK not in stderr
        assert PROBE_LINE not in stderr
    assert len(list(cache.glob("jit__reconstruct-*-cache"))) == 1
    again = _finish(_inpaint(tmp_path, "3.png", f"--xla_cache={cache}"))
    assert NETWORK_READ_BACK in again and NETWORK_MISSED not in again
    # Off (the variable overrides JAX's own one, which points at the filled cache).
    off = _finish(
        _inpaint(
            tmp_path,
            "4.png",
            **{compile_cache.ENV_VAR: "off", "JAX_COMPILATION_CACHE_DIR": str(cache)},
        )
    )
    assert NETWORK_READY in off  # compiled: the cache was not looked at
    assert NETWORK_READ_BACK not in off and NETWORK_MISSED not in off
    results = [np.asarray(Image.open(tmp_path / f"{k}.png")) for k in (1, 2, 3, 4)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
