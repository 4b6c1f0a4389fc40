"""One process of a two-process training run on localhost (started by tests/test_train.py).

usage: distributed_train.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
"""

import sys

import jax

process_id, num_processes, port, workdir = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    sys.argv[3],
    sys.argv[4],
)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402

from deepgin_jax import config as config_lib  # noqa: E402
from deepgin_jax import train_lib  # noqa: E402

config = config_lib.apply_variant(config_lib.default_config(), "smoke")
config.warmup_steps = 1
config.gan_steps = 1
config.sample_every_steps = 100
state = train_lib.train_and_evaluate(config, workdir)
checksum = sum(
    float(np.sum(np.asarray(x.addressable_data(0), np.float64)))
    for x in jax.tree.leaves(state.g_params)
)
print(
    f"RESULT process={jax.process_index()} count={jax.process_count()} "
    f"devices={jax.device_count()} step={int(state.step)} checksum={checksum:.10e}",
    flush=True,
)
