"""Shared fixtures, the test session's JAX settings and its order for pytest-xdist workers.

Compiling on the CPU dominates this suite's time, so before JAX starts:
- XLA's backend optimisation is turned down (compiles ~4x faster; the tiny test networks run
  in milliseconds either way, and the results are the same to float32 rounding);
- compiled programs go to a persistent cache shared by the test processes (xdist workers) and
  the subprocesses they start (training runs, the CLIs), so an identical program compiles once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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
# No size bound, for the test processes and (inherited) every subprocess: with one, JAX scans
# the whole folder (a stat and a last-use read per entry) under a folder-wide lock at every
# write, and the suite writes thousands of entries to one folder: minutes of CPU, and workers
# waiting on each other. Unbounded, JAX writes entries unlocked; an entry read while another
# process writes it fails to decompress, which JAX reports and compiles again. (Every process
# must agree: a bounded one fails every write to a folder of entries without last-use records.)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")
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
from filelock import FileLock  # noqa: E402

from deepgin_jax.models import DeepGIN  # noqa: E402

TINY_WIDTH = 16  # base_features of the tiny generator used across the suite
# The tiny generator: one residual block in each stage (every kind of layer is there; it
# compiles in a fraction of the time of the default six).
TINY_ARCHITECTURE = {"base_features": TINY_WIDTH, "num_coarse_blocks": 1, "num_refine_blocks": 1}


def masked_inputs(n: int, h: int, w: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """A random image with white holes and its mask: a block and a band along the bottom."""
    rng = np.random.default_rng(seed)
    image = rng.random((n, h, w, 3), dtype=np.float32)
    mask = np.zeros((n, h, w, 1), np.float32)
    mask[:, h // 4 : h // 2, w // 8 : w // 2] = 1
    mask[:, -6:, :] = 1
    return jnp.asarray(image * (1 - mask) + mask), jnp.asarray(mask)


@pytest.fixture(scope="session", autouse=True)
def _process_settings_left_alone() -> Iterator[None]:
    """Commands run in this process (`inpaint.run`, the editor's `main`) would limit NumPy's
    and SciPy's BLAS to one thread and turn NumPy's huge-page advice off for every later test;
    test_inpaint_cli runs the real `cli.one_blas_thread` and `cli.no_huge_page_advice` in a
    process of their own."""
    from deepgin_jax import cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "one_blas_thread", lambda: None)
        patch.setattr(cli, "no_huge_page_advice", lambda: None)
        yield


@pytest.fixture(scope="session")
def tiny_generator() -> tuple[DeepGIN, dict]:
    """(model, variables) of a DeepGIN with base width 16."""
    model = DeepGIN(**TINY_ARCHITECTURE)
    masked, mask = masked_inputs(1, 16, 16)
    return model, jax.jit(model.init)(jax.random.key(0), masked, mask)


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory) -> Path:
    """The uninterrupted run that the resume tests (killed runs, corrupt checkpoints) compare
    with: `tests.test_train.RESUME_REFERENCE_OVERRIDES`, checkpoints 1 to 6 each with its
    digests, trained once for the session (once for all xdist workers). Tests copy it before
    changing anything."""
    from deepgin_jax import train_lib
    from tests.test_train import RESUME_REFERENCE_OVERRIDES, smoke_config

    def train(workdir: Path) -> Path:
        train_lib.train_and_evaluate(smoke_config(**RESUME_REFERENCE_OVERRIDES), str(workdir))
        return workdir

    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process runs every test
        return train(tmp_path_factory.mktemp("resume_reference") / "run")
    # The workers' temporary folders share this session's parent; the first worker to get
    # here trains, the others wait for it and read the finished run.
    shared = tmp_path_factory.getbasetemp().parent / "resume_reference"
    with FileLock(f"{shared}.lock"):
        if not (shared / "trained").is_file():
            shutil.rmtree(shared, ignore_errors=True)  # what a failed attempt left
            train(shared / "run")
            (shared / "trained").touch()
    return shared / "run"


# The test files that take longest (minutes each on two cores), slowest first: xdist's workers
# (`--dist loadfile`, one file to a worker, so each module-scoped fixture is built once) start
# with them, so that none is left running alone at the end.
SLOW_FIRST = (
    "tests/test_cluster.py",  # three training processes at once, then a resume on two layouts
    "tests/test_train.py",
    "tests/test_checkpoint_integrity.py",
    "tests/test_learning.py",
    "tests/test_remote_workdir.py",
)


def pytest_configure(config) -> None:
    """Files go out in the workers' collection order however pytest is called, as with
    `--no-loadscope-reorder` (the Makefile's): xdist's own order, files with the most tests
    first, would start the slowest files last and leave one worker running them alone."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items) -> None:
    """An xdist worker's collection order is the order in which files are handed out."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: _slowness_rank(item.nodeid))


def _slowness_rank(nodeid: str) -> int:
    path = nodeid.split("::", 1)[0]
    return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)
