"""Trains DeepGIN: `python -m deepgin_jax.train --config=configs/ade20k.py --workdir=DIR`.

Overrides: `--config.optim.g_lr=2e-4`, `--config.data.folder=/photos` (a key that does not
exist is an error). A workdir that holds checkpoints is resumed from its latest step.

A run that cannot start (a config file, key or value, the VGG-19 weights, the training images,
the workdir, a checkpoint of another run there) stops with one line that names the problem and
its fix, exit code 2, before it writes anything (`train_lib.preflight`); `-v 1` or
DEEPGIN_TRACEBACK=1 adds the traceback.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from deepgin_jax import checkpointing, cli, compile_cache, metric_writers, sharding, train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize(): auto = when the launcher started several processes.",
)
flags.mark_flags_as_required(["config", "workdir"])

CONFIGS = "configs/ade20k.py, celebahq.py, photos.py, compact.py, demo.py"


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with a config file that cannot be read, a `--config.x=y` key that
    does not exist or a value that does not parse reported in one line, exit code 2."""
    try:
        remaining = FLAGS(argv)
        _ = FLAGS.config.to_dict()  # a config file that failed to load raises on first use
    except Exception as e:  # anything raised here comes from the user's flags or config file
        FLAGS.mark_as_parsed()  # logs without absl's "before flag parsing" notice
        sys.exit(cli.user_failure(e, _flag_problem(e, argv)))
    return remaining


def _flag_problem(error: Exception, argv: Sequence[str]) -> str:
    text = str(error)
    config_arg = next((a for a in argv if a.startswith("--config=")), "--config")
    if "Error whilst parsing config file" in text:  # get_config raised: its last line says why
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        return f"{config_arg}: {last}"
    if isinstance(error, OSError):
        return (
            f"cannot read {config_arg}: no such config file (the configs are {CONFIGS}, "
            "relative to the repository root)"
        )
    if isinstance(error, (AttributeError, KeyError)):  # a --config.x=y override's unknown key
        key = re.search(r"'([^'\\]+)", text)
        name = key.group(1) if key else text
        hint = re.search(r'Did you mean "([^"]+)"', text)
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.") and name in a]
        flag = overrides[0] if overrides else "a --config.KEY=VALUE override"
        return f"{flag}: the config has no key {name!r}" + (
            f"; did you mean {hint.group(1)!r}?" if hint else ""
        )
    if missing := re.search(r"Flag (--\w+) must have a value other than None", text):
        return f"{missing.group(1)} is required: e.g. --config=configs/ade20k.py --workdir=DIR"
    if isinstance(error, flags.Error):
        return cli.one_line(text)
    return f"{config_arg}: {type(error).__name__}: {cli.one_line(text)}"


FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


def _apply_fast_compile(config: Any) -> None:
    """`config.fast_compile`: XLA reads its flags when JAX starts its backend, which is later."""
    if config.fast_compile and "xla_backend_optimization_level" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}"


def _cache_compiled_programs() -> None:
    """Keeps the compiled steps in the persistent compilation cache (`compile_cache`: the
    user's cache folder, or $DEEPGIN_XLA_CACHE, --jax_compilation_cache_dir or
    $JAX_COMPILATION_CACHE_DIR): compiling takes minutes on a CPU, and a rerun or a resumed run
    then starts in seconds. DEEPGIN_XLA_CACHE=off or --jax_enable_compilation_cache=false turns
    it off."""
    if jax.config.jax_enable_compilation_cache:
        compile_cache.enable(jax.config.jax_compilation_cache_dir or None)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.usage_failure(
            "unexpected arguments %s: everything is a flag, e.g. --config=configs/ade20k.py "
            "--workdir=DIR",
            " ".join(argv[1:]),
        )
    metric_writers.quiet_library_logging()
    # Its INFO lines list the backends it could not start (libtpu on every other host); a GPU
    # that JAX cannot use still gets its warning.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    _apply_fast_compile(FLAGS.config)
    _cache_compiled_programs()
    try:
        sharding.maybe_initialize_distributed(FLAGS.distributed)
        train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (
        train_lib.CannotStartError,
        sharding.DistributedConfigError,
        checkpointing.CheckpointCorruptError,  # no checkpoint in the workdir verifies
    ) as e:
        return cli.user_failure(e)
    return cli.EXIT_OK


if __name__ == "__main__":
    jax.config.config_with_absl()
    app.run(main, flags_parser=parse_flags)
