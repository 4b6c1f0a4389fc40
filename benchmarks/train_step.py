"""Training-step throughput of the full-size DeepGIN (GAN stage: G, D and VGG-19 losses).

    python -m benchmarks.train_step --batches=1 --repeats=2                 # CPU
    python -m benchmarks.train_step --batches=1,12,48 --dtypes=float32,bfloat16   # a GPU
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python -m benchmarks.train_step --width=16 --size=64 --devices=1,2,4   # scaling

Reports compile time, step time, images/s, the step's FLOPs from XLA's cost analysis and MFU
against the device's dense peak (or --peak_tflops). The FLOPs are counted on the step with
XLA's attention, since the cost analysis counts a loop's body once and the chunked attention
(a CPU's choice) is a loop over blocks of queries; both compute the same. Weights are random:
speed does not depend on them. Writes benchmarks/results/train_step.{json,md}.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from benchmarks import common
from deepgin_jax import config as config_lib
from deepgin_jax import train_state, train_steps
from deepgin_jax.models.vgg import VGG19_CONV_NAMES, VGGFeatures

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["12"], "Global batch sizes in samples (the paper: 12 = 4 x 3).")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16).")
flags.DEFINE_list("devices", ["all"], "Device counts to shard the batch over ('all' = every).")
flags.DEFINE_enum("stage", "gan", ["gan", "warmup"], "Which train step.")
flags.DEFINE_integer("width", 64, "Generator base_features (64 = the paper's).")
flags.DEFINE_integer("size", 256, "Training crop size.")
flags.DEFINE_bool(
    "vgg", True, "Include the perceptual and style losses (a VGG-19 of random weights)."
)
flags.DEFINE_integer("repeats", 5, "Timed steps.")
flags.DEFINE_float("peak_tflops", None, "Device peak for MFU (default: from the device kind).")
flags.DEFINE_string("out", "benchmarks/results", "Where to write the results.")

VGG_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


def random_tree(shapes, rng: np.random.Generator):
    def draw(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree.map(draw, shapes)


def random_vgg(rng: np.random.Generator) -> VGGFeatures:
    params, cin = {}, 3
    for name, width in zip(VGG19_CONV_NAMES, VGG_WIDTHS, strict=True):
        params[name] = {
            "kernel": (rng.standard_normal((3, 3, cin, width)) / np.sqrt(9 * cin)).astype(
                np.float32
            ),
            "bias": np.zeros(width, np.float32),
        }
        cin = width
    return VGGFeatures(params=params, convention="torchvision")


def jitted_step(setup: train_state.Setup, mesh: Mesh):
    """The stage's train step, jitted with the batch sharded over `mesh` and the state donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    in_shardings = (replicated, NamedSharding(mesh, PartitionSpec("data")))
    if FLAGS.stage == "gan":
        fn = functools.partial(
            train_steps.gan_step,
            setup=setup,
            stage_start=0,
            clip_norm=3.0,
            clip_includes_discriminator=True,
        )
        in_shardings += (replicated,)  # the VGG-19 weights
    else:
        fn = functools.partial(train_steps.warmup_step, setup=setup)
    return jax.jit(
        fn, in_shardings=in_shardings, out_shardings=(replicated, replicated), donate_argnums=0
    )


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    rows = []
    for dtype_name in FLAGS.dtypes:
        config = config_lib.default_config()
        config.compute_dtype = dtype_name
        config.model.base_features = FLAGS.width
        if not FLAGS.vgg:
            config.loss.perceptual_weight = config.loss.style_weight = 0.0
        setup = train_state.build_setup(config)
        config.model.attention_impl = "xla"
        counting_setup = train_state.build_setup(config)
        init = functools.partial(train_state.init_train_state, setup, crop_size=FLAGS.size)
        state_host = random_tree(jax.eval_shape(init, jax.random.key(0)), rng)
        vgg_host = random_vgg(rng) if FLAGS.vgg and FLAGS.stage == "gan" else None
        counts = [jax.device_count() if d == "all" else int(d) for d in FLAGS.devices]
        for num_devices in counts:
            mesh = Mesh(
                np.array(jax.devices()[:num_devices]),
                ("data",),
                axis_types=(jax.sharding.AxisType.Auto,),
            )
            replicated = NamedSharding(mesh, PartitionSpec())
            batched = NamedSharding(mesh, PartitionSpec("data"))
            step = jitted_step(setup, mesh)
            for batch_size in map(int, FLAGS.batches):
                batch = {
                    "image": rng.integers(
                        0, 256, (batch_size, FLAGS.size, FLAGS.size, 3), np.uint8
                    ),
                    "mask": (rng.random((batch_size, FLAGS.size, FLAGS.size, 1)) > 0.6).astype(
                        np.uint8
                    ),
                }
                batch = jax.device_put(batch, batched)
                state = jax.device_put(state_host, replicated)
                args = (
                    (state, batch)
                    if FLAGS.stage == "warmup"
                    else (state, batch, jax.device_put(vgg_host, replicated))
                )
                start = time.perf_counter()
                compiled = step.lower(*args).compile()
                compile_s = time.perf_counter() - start
                # All devices' FLOPs: the program before it is partitioned.
                flops = common.lowered_flops(jitted_step(counting_setup, mesh).lower(*args))
                extra = args[2:]
                state, metrics = compiled(state, batch, *extra)  # warm-up call
                common.block(metrics)
                times = []
                for _ in range(FLAGS.repeats):
                    start = time.perf_counter()
                    state, metrics = compiled(state, batch, *extra)
                    common.block(metrics)
                    times.append(time.perf_counter() - start)
                step_s = float(np.median(times))
                peak = common.peak_tflops(dtype_name, FLAGS.peak_tflops)
                mfu = flops / num_devices / step_s / (peak * 1e12) if flops and peak else None
                rows.append(
                    {
                        "stage": FLAGS.stage,
                        "dtype": dtype_name,
                        "devices": num_devices,
                        "batch": batch_size,
                        "size": FLAGS.size,
                        "width": FLAGS.width,
                        "compile_s": compile_s,
                        "step_ms": step_s * 1e3,
                        "images_per_s": batch_size / step_s,
                        "tflop_per_step": flops / 1e12 if flops else None,
                        "mfu": mfu,
                        **common.peak_memory_bytes(),
                    }
                )
                print(rows[-1], flush=True)
    columns = [
        "stage",
        "dtype",
        "devices",
        "batch",
        "size",
        "width",
        "step_ms",
        "images_per_s",
        "tflop_per_step",
        "mfu",
        "compile_s",
        "device_peak_bytes",
        "host_max_rss_bytes",
    ]
    name = "train_step" if FLAGS.stage == "gan" else f"train_step_{FLAGS.stage}"
    print(common.write_results(name, rows, columns, FLAGS.out).read_text())


if __name__ == "__main__":
    app.run(main)
