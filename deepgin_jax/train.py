"""Trains DeepGIN: `python -m deepgin_jax.train --config=configs/ade20k.py --workdir=DIR`.

Overrides: `--config.optim.g_lr=2e-4`, `--config.data.folder=/photos` (a key that does not
exist is an error). A workdir that holds checkpoints is resumed from its latest step.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from deepgin_jax import metric_writers, sharding, train_lib

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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metric_writers.quiet_library_logging()
    sharding.maybe_initialize_distributed(FLAGS.distributed)
    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    jax.config.config_with_absl()
    app.run(main)
