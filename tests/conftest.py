"""Shared fixtures and the test session's JAX settings.

Compiling on the CPU dominates this suite's time, so before JAX starts:
- XLA's backend optimisation is turned down (compiles ~4x faster; the tiny test networks run
  in milliseconds either way, and the results are the same to float32 rounding);
- compiled programs go to a persistent cache shared by the test process and the subprocesses
  it starts (training runs, the CLIs), so an identical program compiles once.
"""

from __future__ import annotations

import os
from pathlib import Path

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    # Once: the flags are part of every compiled program's cache key, so a second copy would
    # set the test process apart from the subprocesses that inherit its environment.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax_compilation_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Pretrained networks in the user's cache must not change what a test sees: the default folder
# (deepgin_jax.user_cache) is one that no test writes unless it sets its own.
os.environ["DEEPGIN_PRETRAINED_DIR"] = str(
    Path(__file__).resolve().parent.parent / ".pytest_cache" / "no_pretrained_networks"
)

import jax  # noqa: E402  (after the environment above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deepgin_jax.models import DeepGIN  # noqa: E402

TINY_WIDTH = 16  # base_features of the tiny generator used across the suite


def masked_inputs(n: int, h: int, w: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """A random image with white holes and its mask: a block and a band along the bottom."""
    rng = np.random.default_rng(seed)
    image = rng.random((n, h, w, 3), dtype=np.float32)
    mask = np.zeros((n, h, w, 1), np.float32)
    mask[:, h // 4 : h // 2, w // 8 : w // 2] = 1
    mask[:, -6:, :] = 1
    return jnp.asarray(image * (1 - mask) + mask), jnp.asarray(mask)


@pytest.fixture(scope="session")
def tiny_generator() -> tuple[DeepGIN, dict]:
    """(model, variables) of a DeepGIN with base width 16."""
    model = DeepGIN(base_features=TINY_WIDTH)
    masked, mask = masked_inputs(1, 16, 16)
    return model, jax.jit(model.init)(jax.random.key(0), masked, mask)


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory) -> Path:
    """The uninterrupted run that the resume tests (killed runs, corrupt checkpoints) compare
    with: `tests.test_train.RESUME_REFERENCE_OVERRIDES`, checkpoints 1 to 6 each with its
    digests, trained once for the session. Tests copy it before changing anything."""
    from deepgin_jax import train_lib
    from tests.test_train import RESUME_REFERENCE_OVERRIDES, smoke_config

    workdir = tmp_path_factory.mktemp("resume_reference") / "run"
    train_lib.train_and_evaluate(smoke_config(**RESUME_REFERENCE_OVERRIDES), str(workdir))
    return workdir
